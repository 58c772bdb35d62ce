"""The apps the end-to-end benchmarks serve: hello world, bare and wrapped in WSGIWatch.

gunicorn imports them as ``bench_apps:raw_app``, ``bench_apps:application`` or
``bench_apps:side_by_side`` (both in one process) with this directory on ``PYTHONPATH``;
the spool directory comes from ``$WSGIWATCH_DIR``.
``/slow/<seconds>`` sleeps first (the blocker of the stall benchmark); any other path
answers ``hello`` at once.

``timed_side_by_side`` serves the bare app, the floor middleware and WSGIWatch in one
process (``/bare/...``, ``/floor/...``, ``/watched/...``), each inside a timing shim: per
request, the time spent in the app call plus in the response's ``close()`` (not the
server's sending in between), measured inside the real worker. ``GET /_stats/<contender>``
answers the median (and p10, p90) in ns since the last ask, as JSON. The shim costs the
same around all three, so differences are what each middleware adds where it really runs:
after the server's own work has pushed it out of the CPU caches.
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


def side_by_side(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    """Both in one process: ``/watched/...`` goes through WSGIWatch, anything else is the
    bare app. A/B runs against one worker then differ by the middleware alone; two worker
    processes differ by a few percent on their own (memory layout, cache sets)."""
    if environ.get("PATH_INFO", "").startswith("/watched/"):
        return application(environ, start_response)
    return raw_app(environ, start_response)


# -- the timing shim ----------------------------------------------------------------------
_perf = time.perf_counter_ns
_samples: dict[str, list[int]] = {}  # contender -> ns per request since the last /_stats


class _Timed:
    __slots__ = ("inner", "samples", "spent")

    def __init__(self, inner: Iterable[bytes], spent: int, samples: list[int]) -> None:
        self.inner = inner
        self.spent = spent
        self.samples = samples

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.inner)

    def close(self) -> None:
        t0 = _perf()
        close = getattr(self.inner, "close", None)
        if close is not None:
            close()
        self.samples.append(self.spent + _perf() - t0)
        if len(self.samples) > 200_000:
            del self.samples[:100_000]


def _stats(label: str, start_response: Callable[..., Any]) -> list[bytes]:
    ordered = sorted(_samples.get(label, []))
    _samples.pop(label, None)
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


def _floor() -> App:
    from middleware_overhead import floor_app  # this directory, on PYTHONPATH

    return floor_app(os.environ.get("WSGIWATCH_DIR") or "/dev/shm", raw_app)


#: contender -> how to build its app (on the first request, in the worker)
_CONTENDERS: dict[str, Callable[[], App]] = {
    "bare": lambda: raw_app,
    "floor": _floor,
    "watched": lambda: application,
}
_built: dict[str, App] = {}


def timed_side_by_side(
    environ: dict[str, Any], start_response: Callable[..., Any]
) -> Iterable[bytes]:
    """``/<contender>/...`` runs that contender (bare, floor, watched) inside the shim;
    ``/_stats/<contender>`` answers its figures since the last ask, as JSON."""
    parts = environ.get("PATH_INFO", "").split("/", 3)
    label = parts[2] if len(parts) > 2 and parts[1] == "_stats" else parts[1]
    if parts[1] == "_stats":
        return _stats(label, start_response)
    app = _built.get(label)
    if app is None:
        app = _built[label] = _CONTENDERS[label]()
    samples = _samples.setdefault(label, [])
    t0 = _perf()
    result = app(environ, start_response)
    return _Timed(result, _perf() - t0, samples)


# -- CPU per request, two apps interleaved request by request ---------------------------
_thread_cpu = time.thread_time_ns
_cycles: dict[str, list[int]] = {"bare": [], "watched": []}
_last: list[Any] = []  # [kind, thread CPU ns] of the request before this one


def cycled_side_by_side(
    environ: dict[str, Any], start_response: Callable[..., Any]
) -> Iterable[bytes]:
    """``side_by_side``, measuring each request's whole cycle: the worker thread's CPU time
    from this request's app call to the next one's (the app, sending, closing, accepting
    and parsing the next request), counted for this request's kind. With the two kinds
    interleaved request by request, whatever slows the machine down slows both alike.
    ``GET /_cycles`` answers the figures since the last ask, as JSON. Sync workers only
    (one request at a time per thread)."""
    now = _thread_cpu()
    path = environ.get("PATH_INFO", "")
    if path == "/_cycles":
        _last.clear()
        figures = {kind: sorted(values) for kind, values in _cycles.items()}
        for values in _cycles.values():
            values.clear()
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(figures).encode()]
    if _last:
        _cycles[_last[0]].append(now - _last[1])
    kind = "watched" if path.startswith("/watched/") else "bare"
    _last[:] = [kind, now]
    if kind == "watched":
        return application(environ, start_response)
    return raw_app(environ, start_response)
