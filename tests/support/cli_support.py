"""Running the real ``wsgiwatch`` command in subprocesses (tests of the CLI and of ``run``)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any

from support.servers import TESTS_DIR, free_port

WSGIWATCH = os.path.join(os.path.dirname(sys.executable), "wsgiwatch")
FAKE = "support.fake_monitor:FakeMonitor"

__all__ = ["FAKE", "WSGIWATCH", "free_port", "get", "log_events", "spawn", "wait_http"]


def environment(extra: dict[str, str] | None = None) -> dict[str, str]:
    """Our environment without WSGIWATCH_* settings, with tests/ importable."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("WSGIWATCH_")}
    env["PYTHONPATH"] = TESTS_DIR
    env.update(extra or {})
    return env


@contextlib.contextmanager
def spawn(
    args: Sequence[str], env: dict[str, str] | None = None, **kwargs: Any
) -> Iterator[subprocess.Popen[str]]:
    """``wsgiwatch ARGS...`` with stderr piped; killed (by pid) if still running at the end."""
    proc = subprocess.Popen(
        [WSGIWATCH, *args],
        env=environment(env),
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,
    )
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=10)


def get(port: int, path: str, timeout: float = 5.0) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_http(port: int, proc: subprocess.Popen[str], timeout: float = 15.0) -> None:
    """Wait until ``proc`` answers /healthz on 127.0.0.1:port (any status)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"exited with {proc.returncode}: {proc.communicate()[1]}")
        try:
            get(port, "/healthz", timeout=1.0)
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError(f"nothing answered on port {port} within {timeout} s")


def log_events(stderr: str) -> list[dict[str, Any]]:
    """The JSON log lines in ``stderr``, parsed (other lines are the child's own output)."""
    events = []
    for line in stderr.splitlines():
        if line.startswith("{"):
            events.append(json.loads(line))
    return events
