"""``wsgiwatch demo``: watch head-of-line blocking happen, then read the verdict.

Starts a small app (:mod:`wsgiwatch.cli.demo_app`) under a greedy server (gunicorn gthread by
default; waitress, or gunicorn sync as the healthy contrast) on 127.0.0.1, a sidecar
monitor in this process, and a bounded load: a slow ``/report`` now and then among fast
requests. Then it prints what the sidecar found. Everything it starts, it stops (by pid).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import importlib.util
import logging
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TextIO

import structlog

from wsgiwatch.cli.advice import advice_for
from wsgiwatch.cli.diagnosis import Snapshot, analyse
from wsgiwatch.cli.diagnosis_text import render
from wsgiwatch.cli.process_group import stop_group
from wsgiwatch.cli.timeline_html import render_html
from wsgiwatch.sidecar.monitor import Monitor

Server = Literal["gthread", "waitress", "sync"]


@dataclass
class LoadResult:
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: int = 0

    def add(self, route: str, seconds: float) -> None:
        self.latencies.setdefault(route, []).append(seconds)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_command(server: Server, port: int) -> list[str]:
    bind = f"127.0.0.1:{port}"
    if server == "waitress":
        return [
            sys.executable,
            "-c",
            "from wsgiwatch.worker.accept_hook import serve_waitress;"
            "from wsgiwatch.cli.demo_app import application;"
            f"serve_waitress(application, host='127.0.0.1', port={port}, threads=1)",
        ]
    worker_class = "gthread" if server == "gthread" else "sync"
    return [
        sys.executable,
        "-m",
        "gunicorn",
        "--bind",
        bind,
        "--workers",
        "2",
        "--threads",
        "1",
        "--worker-class",
        worker_class,
        "--log-level",
        "warning",
        "-c",
        "python:wsgiwatch.gunicorn_config",
        "wsgiwatch.cli.demo_app:application",
    ]


@contextlib.contextmanager
def running(argv: list[str], env: dict[str, str], port: int) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(
        argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                raise RuntimeError(f"the server exited with {proc.returncode}: {err[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("the server did not start listening in 20 s") from None
                time.sleep(0.05)
        yield proc
    finally:
        stop_group(proc)
        if proc.stderr:
            proc.stderr.close()


def _request(port: int, path: str, result: LoadResult, route: str) -> None:
    started = time.monotonic()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
        conn.request("GET", path)
        conn.getresponse().read()
        conn.close()
    except OSError:
        result.errors += 1
        return
    result.add(route, time.monotonic() - started)


def drive_load(port: int, seconds: float, progress: TextIO | None) -> LoadResult:
    """A slow report every 2.5 s; between them, fast requests from four clients."""
    result = LoadResult()
    stop_at = time.monotonic() + seconds
    threads: list[threading.Thread] = []

    def fast_client(n: int) -> None:
        i = 0
        while time.monotonic() < stop_at and i < 2000:
            path = f"/product/{n * 1000 + i}" if i % 2 else "/"
            _request(port, path, result, "/product/<id>" if i % 2 else "/")
            i += 1
            time.sleep(0.05)

    for n in range(4):
        threads.append(threading.Thread(target=fast_client, args=(n,), daemon=True))
    for t in threads:
        t.start()
    reports = 0
    while time.monotonic() < stop_at - 1.0:
        t = threading.Thread(
            target=_request, args=(port, "/report", result, "/report"), daemon=True
        )
        t.start()
        threads.append(t)
        reports += 1
        for _ in range(25):
            if progress is not None:
                done = sum(len(v) for v in result.latencies.values())
                left = max(0.0, stop_at - time.monotonic())
                progress.write(
                    f"\r  load: {done} requests done, {reports} slow reports, {left:4.1f} s left "
                )
                progress.flush()
            time.sleep(0.1)
            if time.monotonic() >= stop_at - 1.0:
                break
    for t in threads:
        t.join(20)
    if progress is not None:
        progress.write("\n")
    return result


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


def report(snapshot: Snapshot, load: LoadResult, server: Server, out: TextIO) -> bool:
    """Print what the clients saw, then the sidecar's diagnosis; True when the verdict is
    what this server is known to do (greedy ones block, sync does not)."""
    print(f"\nWhat the clients saw ({server}):", file=out)
    for route, values in sorted(load.latencies.items()):
        print(
            f"  {route:15} n={len(values):4d}  p50 {_pct(values, 0.5) * 1000:7.1f} ms"
            f"  p99 {_pct(values, 0.99) * 1000:7.1f} ms",
            file=out,
        )
    if load.errors:
        print(f"  {load.errors} requests failed", file=out)
    diagnosis = analyse(snapshot)
    advice, _ = advice_for(snapshot, diagnosis)
    print("\n" + render(diagnosis, advice, "the demo's sidecar"), file=out)
    expected_blocking = server != "sync"
    return (
        (diagnosis.blocked > 0) == expected_blocking and load.errors == 0 and diagnosis.requests > 0
    )


def run_demo(
    server: Server = "gthread",
    seconds: float = 12.0,
    out: TextIO = sys.stdout,
    timeline_path: str | None = "wsgiwatch-demo-timeline.html",
) -> int:
    needed = "waitress" if server == "waitress" else "gunicorn"
    if importlib.util.find_spec(needed) is None:
        print(f"demo: {needed} is not installed: pip install 'wsgiwatch[demo]'", file=sys.stderr)
        return 2
    port = _free_port()
    shm = "/dev/shm" if os.path.isdir("/dev/shm") else None  # tmpfs: no disk writeback
    with tempfile.TemporaryDirectory(prefix="wsgiwatch-demo-", dir=shm) as spool_dir:
        os.chmod(spool_dir, 0o700)
        env = dict(os.environ, WSGIWATCH_DIR=spool_dir)
        print(
            f"Starting {server} on 127.0.0.1:{port} (2 workers x 1 thread) with WSGIWatch; "
            f"spool {spool_dir}",
            file=out,
        )
        monitor = Monitor(spool_dir, poll_interval_s=0.25)
        stop = threading.Event()

        def poll_loop() -> None:
            while not stop.wait(0.25):
                monitor.poll()

        try:
            with running(server_command(server, port), env, port):
                poller = threading.Thread(target=poll_loop, daemon=True)
                poller.start()
                load = drive_load(port, seconds, out if out.isatty() else None)
                time.sleep(0.6)  # let the last records reach the sidecar
                stop.set()
                poller.join(5)
                monitor.poll()
                # Read while the workers live: the diagnosis describes them too.
                snapshot = Snapshot.from_monitor(monitor, seconds + 5)
        except RuntimeError as exc:
            print(f"demo failed: {exc}", file=sys.stderr)
            return 2
        finally:
            stop.set()
            monitor.close()
        ok = report(snapshot, load, server, out)
    if timeline_path:
        try:
            with open(timeline_path, "w", encoding="utf-8") as f:
                f.write(render_html(snapshot.recent, f"wsgiwatch demo on {server}"))
        except OSError as exc:
            print(f"could not write the timeline: {exc}", file=sys.stderr)
            return 1
        print(f"\nTimeline: {os.path.abspath(timeline_path)} (open it in a browser)", file=out)
    return 0 if ok else 1


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="watch head-of-line blocking happen on a real server, then read the verdict",
        description="Start a small app under a greedy server on 127.0.0.1 with WSGIWatch, a "
        "sidecar, and a bounded load (a slow route among fast ones); print what the sidecar "
        "found. Ends by itself; leaves no process behind.",
    )
    parser.add_argument(
        "--server",
        choices=["gthread", "waitress", "sync"],
        default="gthread",
        help="gthread and waitress accept greedily; sync is the healthy "
        "contrast (default: gthread)",
    )
    parser.add_argument(
        "--seconds",
        type=float,
        default=12.0,
        help="how long the load runs (default 12, at most 40)",
    )
    parser.add_argument(
        "--timeline",
        default="wsgiwatch-demo-timeline.html",
        metavar="FILE",
        help="where to write the timeline HTML (default %(default)s; '' for none)",
    )
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    # The incidents are the sidecar's log lines; the demo prints its own summary instead.
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    return run_demo(args.server, max(3.0, min(args.seconds, 40.0)), timeline_path=args.timeline)
