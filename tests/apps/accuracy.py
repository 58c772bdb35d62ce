"""The accuracy tests' app: it says, in response headers, when it was entered and left
(CLOCK_MONOTONIC, one clock for every process here), which process served the request, and
when the connection was accepted (:mod:`support.truth_accept`), so the client holds the
truth each sidecar verdict is scored against.

``/work/<ms>`` takes that many milliseconds. Under gevent it blocks the whole loop (the
original ``time.sleep``, not the patched one): the call that blocks the loop is the case
where gevent queues requests inside a busy process.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

from support import truth_accept

from wsgiwatch import WSGIWatch


def _blocking_sleep() -> Any:
    if "gevent" in sys.modules:
        from gevent import monkey

        return monkey.get_original("time", "sleep")
    return time.sleep


def raw_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    entry = time.monotonic_ns()
    path = environ.get("PATH_INFO", "")
    if path.startswith("/work/"):
        _blocking_sleep()(int(path[6:]) / 1000)
    accepted = truth_accept.accept_ns(
        environ.get("REMOTE_ADDR", ""), int(environ.get("REMOTE_PORT") or 0)
    )
    exit_ns = time.monotonic_ns()
    start_response(
        "200 OK",
        [
            ("Content-Type", "text/plain"),
            ("Content-Length", "3"),
            ("X-Entry-Ns", str(entry)),
            ("X-Exit-Ns", str(exit_ns)),
            ("X-Accept-Ns", str(accepted)),
            ("X-Pid", str(os.getpid())),
        ],
    )
    return [b"ok\n"]


application = WSGIWatch(raw_app)
