"""``wsgiwatch run -- COMMAND``: exit status, signals, the shared spool directory."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import textwrap

import pytest
from support.cli_support import FAKE, free_port, log_events, spawn

from wsgiwatch.cli.run import exit_status, make_run_dir, remove_abandoned_run_dirs
from wsgiwatch.spool.writer import default_spool_dir

PY = sys.executable


def run(*argv: str, env: dict[str, str] | None = None, listen: str = "127.0.0.1:0"):
    """``wsgiwatch run --listen LISTEN --monitor-factory FAKE ARGV...`` to completion."""
    args = ["run", "--listen", listen, "--monitor-factory", FAKE, *argv]
    with spawn(args, env, stdout=subprocess.PIPE) as proc:
        out, err = proc.communicate(timeout=30)
    return proc.returncode, out, err


def python(code: str) -> list[str]:
    return ["--", PY, "-c", textwrap.dedent(code)]


def read_line(proc: subprocess.Popen[str], timeout: float = 15.0) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"no output within {timeout} s"
    return proc.stdout.readline().strip()


# -- exit status ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status"),
    [
        ("pass", 0),
        ("import sys; sys.exit(3)", 3),
        ("import os, signal; os.kill(os.getpid(), signal.SIGKILL)", 128 + signal.SIGKILL),
        ("import os, signal; os.kill(os.getpid(), signal.SIGTERM)", 128 + signal.SIGTERM),
    ],
)
def test_exit_status_is_passed_through(code, status):
    returncode, _, err = run(*python(code))
    assert returncode == status, err
    events = {e["event"]: e for e in log_events(err)}
    assert events["run.exited"]["status"] == status
    assert events["run.started"]["sidecar"].startswith("http://127.0.0.1:")


def test_exit_status_mapping():
    assert [exit_status(rc) for rc in (0, 3, 255, -9, -15)] == [0, 3, 255, 137, 143]


def test_command_not_found_is_127():
    returncode, _, err = run("--", "/nonexistent/server")
    assert returncode == 127
    assert [e["event"] for e in log_events(err)][-2:] == ["run.command_failed", "sidecar.stopped"]


def test_command_not_executable_is_126(tmp_path):
    script = tmp_path / "server"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o600)
    assert run("--", str(script))[0] == 126


@pytest.mark.parametrize("argv", [[], ["--"]])
def test_no_command_is_a_usage_error(argv):
    returncode, _, err = run(*argv)
    assert returncode == 2
    assert "no server command given" in err


def test_bad_monitor_factory_fails_before_starting_the_server(tmp_path):
    marker = tmp_path / "started"
    args = [
        "run",
        "--monitor-factory",
        "nope:Nothing",
        "--",
        PY,
        "-c",
        f"open({str(marker)!r}, 'w')",
    ]
    with spawn(args) as proc:
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2
    assert "nope:Nothing" in err
    assert not marker.exists()


# -- signals ----------------------------------------------------------------------------------

TRAP = """
    import signal, sys, time
    signal.signal(signal.{name}, lambda *a: sys.exit(7))
    print("ready", flush=True)
    time.sleep(30)
    sys.exit(1)
"""


@pytest.mark.parametrize(
    "signum",
    [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGTTIN],
    ids=lambda s: signal.Signals(s).name,
)
def test_signals_are_forwarded_to_the_server(signum):
    code = TRAP.format(name=signal.Signals(signum).name)
    args = ["run", "--listen", "127.0.0.1:0", "--monitor-factory", FAKE, *python(code)]
    with spawn(args, stdout=subprocess.PIPE) as proc:
        assert read_line(proc) == "ready"
        proc.send_signal(signum)  # to `run` only, not to its process group
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 7, err
    exited = [e for e in log_events(err) if e["event"] == "run.exited"]
    assert exited[0]["forwarded"] == [signal.Signals(signum).name]


def test_a_server_killed_by_a_forwarded_sigterm_gives_143():
    code = 'import time; print("ready", flush=True); time.sleep(30)'
    args = ["run", "--listen", "127.0.0.1:0", "--monitor-factory", FAKE, *python(code)]
    with spawn(args, stdout=subprocess.PIPE) as proc:
        assert read_line(proc) == "ready"
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    assert proc.returncode == 128 + signal.SIGTERM


# -- the spool directory and the sidecar ------------------------------------------------------

SHOW_DIR = """
    import os, stat
    d = os.environ["WSGIWATCH_DIR"]
    print(d)
    print(oct(stat.S_IMODE(os.stat(d).st_mode)))
"""


def test_server_gets_the_given_dir(tmp_path):
    spools = tmp_path / "spools"
    returncode, out, err = run("--dir", str(spools), *python(SHOW_DIR))
    assert returncode == 0, err
    assert out.split() == [str(spools), "0o700"]
    assert spools.is_dir()  # given, so kept


def test_server_gets_the_dir_from_the_environment(tmp_path):
    returncode, out, _ = run(*python(SHOW_DIR), env={"WSGIWATCH_DIR": str(tmp_path / "e")})
    assert returncode == 0
    assert out.split()[0] == str(tmp_path / "e")


def test_without_a_dir_a_fresh_private_one_is_made_and_removed():
    returncode, out, err = run(*python(SHOW_DIR))
    assert returncode == 0, err
    spools, mode = out.split()
    assert os.path.dirname(spools) == default_spool_dir()
    assert os.path.basename(spools).startswith("run-")
    assert mode == "0o700"
    assert not os.path.exists(spools)
    started = [e for e in log_events(err) if e["event"] == "run.started"]
    assert started[0]["spool_dir"] == spools


def test_sidecar_serves_while_the_server_runs_and_stops_after():
    port = free_port()
    code = f"""
        import sys, urllib.request
        with urllib.request.urlopen("http://127.0.0.1:{port}/metrics", timeout=5) as r:
            body = r.read().decode()
        with urllib.request.urlopen("http://127.0.0.1:{port}/healthz", timeout=5) as r:
            healthy = r.status == 200
        sys.exit(0 if healthy and "wsgiwatch_hol_blocked_requests_total" in body else 5)
    """
    returncode, _, err = run(*python(code), listen=f"127.0.0.1:{port}")
    assert returncode == 0, err
    assert [e["event"] for e in log_events(err)][-1] == "sidecar.stopped"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=2).close()


def test_server_runs_even_if_the_sidecar_cannot_listen():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        returncode, _, err = run(*python("import sys; sys.exit(4)"), listen=f"127.0.0.1:{port}")
    assert returncode == 4
    events = {e["event"]: e for e in log_events(err)}
    assert "Address already in use" in events["run.sidecar_failed"]["error"]
    assert events["run.started"]["sidecar"] is None


def test_abandoned_run_dirs_are_removed(tmp_path):
    dead = subprocess.Popen([PY, "-c", "pass"])
    dead.wait()
    names = [f"run-{dead.pid}-abc", f"run-{os.getpid()}-mine", f"run-{os.getppid()}-live", "x"]
    for name in names:
        (tmp_path / name).mkdir()
        (tmp_path / name / "spool").write_text("")
    assert remove_abandoned_run_dirs(str(tmp_path)) == 1
    assert sorted(os.listdir(tmp_path)) == sorted(names[1:])


def test_make_run_dir_is_private(tmp_path):
    base = tmp_path / "base"
    made = make_run_dir(str(base))
    assert os.path.dirname(made) == str(base)
    assert os.stat(made).st_mode & 0o777 == 0o700
    assert os.stat(base).st_mode & 0o777 == 0o700
