"""``wsgiwatch demo``: a real server, a real sidecar monitor, a bounded load, a verdict."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from support.servers import VENV_BIN


def _children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
            if ppid == pid:
                found.append(int(entry))
    return found


@pytest.mark.parametrize(
    ("server", "verdict"),
    [
        ("gthread", "waited inside a busy worker"),
        ("waitress", "waited inside a busy worker"),
        ("sync", "HEALTHY"),
    ],
)
def test_demo_reaches_the_known_verdict_and_cleans_up(
    server: str, verdict: str, tmp_path: os.PathLike[str]
) -> None:
    timeline = os.path.join(tmp_path, "t.html")
    proc = subprocess.run(
        [
            os.path.join(VENV_BIN, "wsgiwatch"),
            "demo",
            "--server",
            server,
            "--seconds",
            "6",
            "--timeline",
            timeline,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert verdict in proc.stdout, proc.stdout
    assert "/report" in proc.stdout
    with open(timeline, encoding="utf-8") as f:
        page = f.read()
    assert "<svg" in page and "/report" in page
    # Everything it started has ended: no child of ours is left, and its spool dir is gone
    # (named by the demo: other demos may run at the same time on a shared machine).
    assert _children_of(os.getpid()) == []
    spool_dir = re.search(r"; spool (/\S+)", proc.stdout)
    assert spool_dir is not None, proc.stdout
    assert not os.path.exists(spool_dir.group(1))


def test_demo_names_the_slow_route_as_the_blocker(tmp_path: os.PathLike[str]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "wsgiwatch.cli", "demo", "--seconds", "6", "--timeline", ""],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    blame = proc.stdout.split("Blocking routes", 1)[1]
    assert blame.splitlines()[1].split()[0] == "/report"
