"""Test apps served by real servers: a slow route, a fast route, a streaming route."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

from wsgiwatch import WSGIWatch


def raw_app(environ: dict[str, Any], start_response: Any) -> Any:
    path = environ.get("PATH_INFO", "")
    if path.startswith("/slow"):
        seconds = float(path.rsplit("/", 1)[-1]) if path.count("/") > 1 else 1.0
        time.sleep(seconds)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"slow\n"]
    if path.startswith("/stream"):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return _stream(int(environ.get("QUERY_STRING") or 10))
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"fast\n"]


def _stream(chunks: int) -> Iterator[bytes]:
    for i in range(chunks):
        time.sleep(0.01)
        yield b"chunk %d\n" % i


# TEST_ACCEPT_HOOK=0: as with ``WSGIWatch(app, accept_hook=False)`` (the kernel view only).
application = WSGIWatch(raw_app, accept_hook=os.environ.get("TEST_ACCEPT_HOOK") != "0")
