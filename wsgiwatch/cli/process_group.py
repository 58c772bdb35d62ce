"""Stopping a child that runs in its own process group (a server and its workers)."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from typing import Any


def stop_group(proc: subprocess.Popen[Any], grace_s: float = 10.0) -> None:
    """SIGTERM the group ``proc`` leads, wait up to ``grace_s``, then SIGKILL it.

    Only for a child started with ``start_new_session=True``: its pid is then its group's,
    and the signal reaches what it forked (gunicorn's workers) and nothing else.
    """
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)
