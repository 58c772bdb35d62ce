"""The apps the end-to-end benchmarks serve: hello world, bare and wrapped in WSGIWatch.

gunicorn imports them as ``bench_apps:raw_app`` or ``bench_apps:application`` with this
directory on ``PYTHONPATH``; the spool directory comes from ``$WSGIWATCH_DIR``.
``/slow/<seconds>`` sleeps first (the blocker of the stall benchmark); any other path
answers ``hello`` at once.

``timed_raw_app``, ``timed_floor_app`` and ``timed_application`` add a timing shim around
the bare app, the floor middleware and WSGIWatch: per request, the time spent in the app
call plus in the response's ``close()`` (not the server's sending in between), measured
inside the real worker. ``GET /_stats`` answers the median (and p10, p90) in ns since the
last ``/_stats`` as JSON. The shim costs the same around all three, so differences are
what each middleware adds where it really runs: after the server's own work has pushed it
out of the CPU caches.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from wsgiwatch import WSGIWatch

App = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
_HEADERS = [("Content-Type", "text/plain"), ("Content-Length", "6")]


def raw_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path.startswith("/slow/"):
        time.sleep(min(float(path[6:] or 1), 30.0))
    start_response("200 OK", _HEADERS)
    return [b"hello\n"]


application = WSGIWatch(raw_app)

# -- the timing shim ----------------------------------------------------------------------
_perf = time.perf_counter_ns
_samples: list[int] = []


class _Timed:
    __slots__ = ("inner", "spent")

    def __init__(self, inner: Iterable[bytes], spent: int) -> None:
        self.inner = inner
        self.spent = spent

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.inner)

    def close(self) -> None:
        t0 = _perf()
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()
        _samples.append(self.spent + _perf() - t0)
        if len(_samples) > 200_000:
            del _samples[:100_000]


def _stats(start_response: Callable[..., Any]) -> list[bytes]:
    ordered = sorted(_samples)
    _samples.clear()
    n = len(ordered)
    figures = {
        "n": n,
        "median_ns": statistics.median(ordered) if n else None,
        "p10_ns": ordered[n // 10] if n else None,
        "p90_ns": ordered[9 * n // 10] if n else None,
    }
    body = json.dumps(figures).encode()
    start_response("200 OK", [("Content-Type", "application/json")])
    return [body]


def timed(get_app: Callable[[], App]) -> App:
    """The shim around the app ``get_app()`` returns (built on the first request)."""
    built: list[App] = []

    def shim(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") == "/_stats":
            return _stats(start_response)
        if not built:
            built.append(get_app())
        app = built[0]
        t0 = _perf()
        result = app(environ, start_response)
        return _Timed(result, _perf() - t0)

    return shim


def _floor() -> App:
    from middleware_overhead import floor_app  # this directory, on PYTHONPATH

    return floor_app(os.environ.get("WSGIWATCH_DIR") or "/dev/shm", raw_app)


timed_raw_app = timed(lambda: raw_app)
timed_floor_app = timed(_floor)
timed_application = timed(lambda: application)
