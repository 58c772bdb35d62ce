"""``wsgiwatch top``: run in a real terminal (tmux) against a real gunicorn gthread and the
real sidecar during a stall, reading what the screen shows; then its frames on fixtures."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.fake_monitor import STATE
from support.hol_scenario import WSGIWATCH, Stack, start_slow_then_fast, truly_blocked, wait_until
from support.servers import free_port

from wsgiwatch.cli.client import Metrics
from wsgiwatch.cli.top import frame, paint

TMUX = shutil.which("tmux")


class Tmux:
    """A private tmux server (its own socket, no user config) running one command."""

    def __init__(self, directory: Path) -> None:
        assert TMUX, "tmux is not installed (Debian package tmux; scripts/setup installs it)"
        self.argv = [TMUX, "-S", str(directory / "tmux.sock"), "-f", "/dev/null"]
        self.rc_file = directory / "rc"

    def __call__(self, *args: str) -> str:
        done = subprocess.run(
            [*self.argv, *args], capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout

    def start(self, argv: list[str], width: int = 120, height: int = 40) -> None:
        """Run ``argv`` in a ``width`` x ``height`` terminal; its exit status goes to a file
        (tmux's own pane_dead_status is filled in late, or not at all, when the pty's end
        of file comes before the child is reaped)."""
        # COLUMNS and LINES from our environment would override the terminal's real size.
        inner = shlex.join(["env", "-u", "COLUMNS", "-u", "LINES", *argv])
        command = f"{inner}; echo $? > {shlex.quote(str(self.rc_file))}"
        self("new-session", "-d", "-s", "top", "-x", str(width), "-y", str(height), command)
        self("set-option", "-t", "top", "remain-on-exit", "on")  # keep the last screen

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "top")

    def wait_for(self, pattern: str, timeout: float = 10.0) -> str:
        """The first screen on which ``pattern`` (a regex) shows."""
        deadline = time.monotonic() + timeout
        while True:
            shown = self.screen()
            if re.search(pattern, shown, re.MULTILINE):
                return shown
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not on screen within {timeout} s:\n{shown}")
            time.sleep(0.05)

    def exit_status(self, timeout: float = 5.0) -> int:
        wait_until(lambda: self.rc_file.exists() and self.rc_file.read_text(), timeout, "exit")
        return int(self.rc_file.read_text())

    def close(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError):
            self("kill-server")  # ends only this server's panes: our own top


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    t = Tmux(tmp_path)
    try:
        yield t
    finally:
        t.close()


def _running_s(screen: str) -> float:
    """The longest running time of a slow request on the screen."""
    found = re.findall(r"GET /slow/:id\s+([\d.]+) (ms|s)\b", screen)
    assert found, screen
    return max(float(n) / (1000 if unit == "ms" else 1) for n, unit in found)


def test_live_view_during_a_stall_in_a_real_terminal(live: Stack, tmux: Tmux) -> None:
    tmux.start([WSGIWATCH, "top", "--url", live.sidecar_url, "--interval", "0.2"])
    idle = tmux.wait_for(r"^\s+1\s+\d+ .*\n\s+idle")
    assert f"wsgiwatch top - {live.sidecar_url}" in idle
    assert re.search(r"workers 2\s+busy 0/2\s+stalled 0", idle), idle
    assert "KERNEL BACKLOG" in idle
    port = live.server.port
    assert re.search(rf"127\.0\.0\.1:{port}\s+0 queued \(limit \d+\)", idle), idle

    load = start_slow_then_fast(port)
    # Both slow requests are accepted at once; the second one, or the fast ones behind
    # them, stall inside a busy worker: the screen shows the stall while it lasts.
    ports = "|".join(str(o.peer_port) for o in load.outcomes if o.peer_port)
    stall = rf"^  worker \d+\s+waiting\s+[\d.]+ m?s\s+127\.0\.0\.1:({ports})\s"
    during = tmux.wait_for(stall, 5)
    assert re.search(r"stalled [1-9]\d* \(oldest [\d.]+ m?s\)", during), during
    assert re.search(r"tid \d+\s+GET /slow/:id\s", during), during  # the route, folded
    first = _running_s(during)
    later = tmux.wait_for(r"GET /slow/:id\s+1\.[3-9]\d s", 5)  # the same requests, older
    assert _running_s(later) > first

    # --once, from another process meanwhile: the same facts, in plain text.
    once = subprocess.run(
        [WSGIWATCH, "top", "--once", "--url", live.sidecar_url],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert once.returncode == 0, once.stderr
    assert "\x1b" not in once.stdout
    assert "WORKER     PID  SERVER" in once.stdout and "gunicorn/" in once.stdout

    outcomes = load.join()
    blocked = len(truly_blocked(outcomes))
    after = tmux.wait_for(rf"stalled 0\s+requests {len(outcomes)}\s+blocked {blocked}\b", 10)
    assert len(re.findall(r"^\s+idle$", after, re.MULTILINE)) == 2, after

    tmux("send-keys", "-t", "top", "q")
    assert tmux.exit_status() == 0, tmux.screen()
    assert "WORKER" not in tmux.screen()  # back on the normal screen, nothing left over


def test_unreachable_sidecar_shows_on_screen_and_retries(tmux: Tmux) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    tmux.start([WSGIWATCH, "top", "--url", url, "--interval", "0.2"], width=100, height=20)
    shown = tmux.wait_for("retrying")
    assert "sidecar unreachable" in shown and "Connection refused" in shown
    tmux("send-keys", "-t", "top", "q")
    assert tmux.exit_status() == 0


def test_once_unreachable_exits_2() -> None:
    result = subprocess.run(
        [WSGIWATCH, "top", "--once", "--url", f"http://127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=20,
        env=dict(os.environ, WSGIWATCH_URL="http://ignored:1"),
    )
    assert result.returncode == 2
    assert "cannot read the sidecar" in result.stderr


# -- frames from fixtures -------------------------------------------------------------------


def test_frame_shows_slots_stalls_and_backlog() -> None:
    metrics = Metrics.from_text(
        'wsgiwatch_requests_total{route="/",status_class="2xx"} 40\n'
        'wsgiwatch_hol_blocked_requests_total{blocker_route="/slow"} 3\n'
        "wsgiwatch_misrouted_requests_total 1\n"
    )
    text = "\n".join(paint(frame(STATE, metrics, "http://x:1", 1.0), 120, None, False))
    assert "every 1 s - q quits" in text
    assert "workers 1   busy 1/1   stalled 1 (oldest 750 ms)" in text
    assert "requests 40   blocked 3   misrouted 1" in text
    assert re.search(r"0\s+4242\s+gunicorn/23.0.0\s+1/1\s+40M\s+yes\s+1", text), text
    assert re.search(r"tid 4250\s+GET /slow\s+1.25 s\s+127.0.0.1:50000", text), text
    assert re.search(r"worker 0\s+waiting\s+750 ms\s+127.0.0.1:50001\s+request read", text)
    assert re.search(r"127.0.0.1:8000\s+0 queued \(limit 2048\)", text), text


def test_paint_cuts_to_the_screen_and_colours() -> None:
    lines = frame(STATE, None, "http://x:1", 1.0)
    small = paint(lines, 30, 6, True)
    assert len(small) == 6
    assert "more lines" in small[-1]
    assert all(len(re.sub(r"\x1b\[[\d;]*m", "", line)) <= 30 for line in small)
    assert any("\x1b[1;31m" in line for line in paint(lines, 120, None, True))  # the stall


def test_frame_without_kernel_or_workers() -> None:
    state = {"workers": [], "stalls": [], "listeners": [], "kernel": False}
    text = "\n".join(paint(frame(state, None, "u"), 100, None, False))
    assert "workers 0   busy 0/0   stalled 0" in text
    assert "not visible (no kernel access)" in text
    assert "sidecar unreachable: boom" in "\n".join(
        paint(frame(None, None, "u", 1.0, error="boom"), 100, None, False)
    )
