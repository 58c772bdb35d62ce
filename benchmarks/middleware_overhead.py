"""Added cost per request of WSGIWatch, side by side with its peers, in one run.

Each contender wraps the same trivial app and is driven the way a server drives an app:
call it, iterate the response, call ``close()``. Every round runs all contenders in turn
(interleaved, so drift hits all alike); we report the median over rounds of the ns per
request above the bare app, and the ratio of each peer's added cost to WSGIWatch's.

    python benchmarks/middleware_overhead.py [--requests 20000] [--rounds 15]
    python benchmarks/middleware_overhead.py --wrk   # also end to end with wrk + gunicorn
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any

App = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def hello_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


def make_environ() -> dict[str, Any]:
    import io

    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/users/42",
        "SCRIPT_NAME": "",
        "QUERY_STRING": "a=1",
        "SERVER_NAME": "127.0.0.1",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": "54321",
        "HTTP_HOST": "127.0.0.1:8000",
        "HTTP_USER_AGENT": "bench",
        "SERVER_SOFTWARE": "gunicorn/bench",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(b""),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }


def _start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return None


def drive(app: App, environ: dict[str, Any], n: int) -> float:
    """ns per request over n requests, as a server would call the app."""
    sr = _start_response
    perf = time.perf_counter_ns
    t0 = perf()
    for _ in range(n):
        result = app(environ, sr)
        for _chunk in result:
            pass
        close = getattr(result, "close", None)
        if close is not None:
            close()
    return (perf() - t0) / n


def wsgiwatch_app(spool_dir: str) -> App:
    from wsgiwatch import WSGIWatch

    return WSGIWatch(hello_app, spool_dir=spool_dir)


def otel_app() -> App:
    from opentelemetry import trace
    from opentelemetry.instrumentation.wsgi import OpenTelemetryMiddleware
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult

    class NoopExporter(SpanExporter):
        def export(self, spans: Any) -> SpanExportResult:
            return SpanExportResult.SUCCESS

    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(NoopExporter()))
    trace.set_tracer_provider(provider)
    return OpenTelemetryMiddleware(hello_app, tracer_provider=provider)  # type: ignore[no-any-return]


def prometheus_app(registry: Any) -> App:
    from prometheus_client import Histogram

    hist = Histogram("request_seconds", "Request duration", ["route"], registry=registry)
    hist.labels("/users/:id")  # create the child now (multiprocess mode opens its file here)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        t0 = time.perf_counter()
        try:
            return hello_app(environ, start_response)
        finally:
            hist.labels("/users/:id").observe(time.perf_counter() - t0)

    return app


def bench(requests: int, rounds: int) -> dict[str, float]:
    env = make_environ()
    spool_dir = tempfile.mkdtemp(prefix="wsgiwatch-bench-")
    os.chmod(spool_dir, 0o700)
    from prometheus_client import CollectorRegistry

    contenders: dict[str, App] = {"bare app": hello_app, "WSGIWatch": wsgiwatch_app(spool_dir)}
    contenders["prometheus_client Histogram"] = prometheus_app(CollectorRegistry())
    contenders["OpenTelemetry WSGI (no-op exporter)"] = otel_app()
    # prometheus_client multiprocess mode: values live in mmap'd files in this directory.
    mp_dir = tempfile.mkdtemp(prefix="wsgiwatch-bench-prom-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = mp_dir
    import importlib

    import prometheus_client.values

    importlib.reload(prometheus_client.values)  # it picks its value class at import
    contenders["prometheus_client multiprocess Histogram"] = prometheus_app(CollectorRegistry())
    del os.environ["PROMETHEUS_MULTIPROC_DIR"]

    for app in contenders.values():  # warm caches and lazy setup
        drive(app, env, 2000)
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(rounds):
        for name, app in contenders.items():
            samples[name].append(drive(app, env, requests))
    bare = samples["bare app"]
    added = {
        name: statistics.median(s - b for s, b in zip(vals, bare, strict=True))
        for name, vals in samples.items()
    }
    added["bare app (absolute ns/request)"] = statistics.median(bare)
    return added


def print_table(added: dict[str, float]) -> None:
    ours = added["WSGIWatch"]
    print(
        f"python {platform.python_version()} on {platform.machine()}, "
        f"{os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}"
    )
    print(f"{'contender':45} {'added ns/request':>17} {'x WSGIWatch':>12}")
    for name, value in added.items():
        if name == "bare app":
            continue
        ratio = "" if name.startswith("bare") else f"{value / ours:12.1f}"
        print(f"{name:45} {value:17.0f} {ratio:>12}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--wrk", action="store_true", help="also run the wrk end-to-end test")
    args = parser.parse_args(argv)
    print_table(bench(args.requests, args.rounds))
    if args.wrk:
        from benchmarks_wrk import run_wrk_comparison  # type: ignore[import-not-found]

        run_wrk_comparison()
    return 0


if __name__ == "__main__":
    sys.exit(main())
