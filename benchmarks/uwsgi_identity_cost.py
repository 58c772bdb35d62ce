"""What reading a uWSGI connection's own peer port costs a request, side by side in one run:
the fast path (the sidecar asks for nothing: the spool header word is 0) and the asked path
(the sidecar sees connections in the listen backlog: ``getpeername`` on
``uwsgi.connection_fd()``), for the C path and the pure-Python one, against the bare app.

Timed in-process, the way a server drives an app (call, iterate, ``close()``), with CPU time
(``time.process_time_ns``), rounds interleaved so drift hits all alike; the median and the
range over rounds of the ns added per request over the bare app. ``uwsgi`` is a stand-in
module whose ``connection_fd()`` is a real accepted TCP socket's fd (only uWSGI's embedded
interpreter has the real module; tests/e2e/test_uwsgi.py runs the same code there). Then each
mode again under ``strace -f -c -e trace=getpeername``, counting the syscalls per request.

    .venv/bin/python benchmarks/uwsgi_identity_cost.py [--requests 20000] [--rounds 9]
    .venv/bin/python benchmarks/uwsgi_identity_cost.py --against /path/to/other/checkout

``--against`` adds instruction counts (valgrind's callgrind: repeatable on a shared machine)
of the fast paths here and in another checkout whose C extension is built (the commit
before this change, say), run by this Python with that checkout first on ``sys.path``.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import types
from collections.abc import Callable, Iterable
from typing import Any

MODES = ("bare", "c-fast", "c-asked", "python-fast", "python-asked")


def hello_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
    return [b"hello"]


def uwsgi_environ() -> dict[str, Any]:
    """What uWSGI's --http-socket puts in the environ (no REMOTE_PORT)."""
    return {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": "/users/42",
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "vm",
        "SERVER_PORT": "8000",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "uwsgi.version": b"2.0.31",
        "wsgi.multithread": False,
        "wsgi.multiprocess": True,
    }


def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
    return None


class Bench:
    """The apps of every mode, a spool directory each, and the socket uWSGI would hold."""

    def __init__(self, modes: tuple[str, ...] = MODES) -> None:
        os.environ.pop("WSGIWATCH_PURE_PYTHON", None)
        from wsgiwatch.spool import layout as fmt
        from wsgiwatch.spool.reader import SpoolReader, list_spools
        from wsgiwatch.worker import accelerator, middleware

        if any(m.startswith("c-") for m in modes) and accelerator.speedups is None:
            raise SystemExit("the C extension is not built in this checkout")

        self.listener = socket.create_server(("127.0.0.1", 0))
        self.client = socket.create_connection(self.listener.getsockname())
        self.server, _ = self.listener.accept()
        fake = types.ModuleType("uwsgi")
        fake.connection_fd = self.server.fileno  # type: ignore[attr-defined]
        sys.modules["uwsgi"] = fake
        base = "/dev/shm" if os.path.isdir("/dev/shm") else None
        self.tmp = tempfile.mkdtemp(prefix="wsgiwatch-bench-", dir=base)
        self.apps: dict[str, Any] = {"bare": hello_app}
        classes = {"c": middleware.WSGIWatch, "python": middleware.PythonWSGIWatch}
        for mode in modes:
            if mode == "bare":
                continue
            kind, asked = mode.split("-")
            directory = os.path.join(self.tmp, mode)
            os.mkdir(directory, 0o700)
            app = classes[kind](hello_app, spool_dir=directory)
            self.drive(app, 1)  # makes the spool
            if asked == "asked":
                (path,) = list_spools(directory)
                with SpoolReader(path) as reader:
                    reader.ask_identity(time.monotonic_ns() + 3600 * 10**9)
            self.apps[mode] = app
        self.fmt = fmt

    @staticmethod
    def drive(app: Any, requests: int) -> None:
        environ = uwsgi_environ()
        for _ in range(requests):
            result = app(dict(environ), start_response)
            for _chunk in result:
                pass
            close = getattr(result, "close", None)
            if close is not None:
                close()

    def cpu_ns(self, mode: str, requests: int) -> float:
        app = self.apps[mode]
        start = time.process_time_ns()
        self.drive(app, requests)
        return (time.process_time_ns() - start) / requests

    def close(self) -> None:
        for sock in (self.server, self.client, self.listener):
            sock.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def strace_calls(mode: str, requests: int) -> float | None:
    """getpeername calls per request of ``mode``, counted by ``strace -c``."""
    strace = shutil.which("strace")
    if strace is None:
        return None
    with tempfile.NamedTemporaryFile("r", suffix=".strace") as out:
        argv = [strace, "-f", "-c", "-e", "trace=getpeername", "-o", out.name]
        argv += [sys.executable, __file__, "--only", mode, "--requests", str(requests)]
        subprocess.run(argv, check=True, capture_output=True, timeout=300)
        text = out.read()
    # "  0.00    0.000000           0         2           getpeername"
    found = re.search(r"^\s*[\d.]+\s+[\d.]+\s+\d+\s+(\d+)(?:\s+\d+)?\s+getpeername", text, re.M)
    setup = 1 if mode.endswith("asked") else 0  # the request that made the spool is not asked
    return (int(found.group(1)) - setup) / requests if found else 0.0


def check_ns() -> float:
    """What the Python path's fast-path check (``mm[OFF_IDENTITY_UNTIL]``) costs, alone."""
    import mmap
    import timeit

    from wsgiwatch.spool import layout as fmt

    mm = mmap.mmap(-1, 4096)
    try:
        timer = timeit.Timer("mm[off]", globals={"mm": mm, "off": fmt.OFF_IDENTITY_UNTIL})
        loops = 1_000_000
        empty = min(timeit.Timer("pass").repeat(5, loops)) / loops
        return (min(timer.repeat(5, loops)) / loops - empty) * 1e9
    finally:
        mm.close()


def instructions(tree: str, mode: str, requests: int) -> int | None:
    """Instructions per request of ``mode`` with the package from ``tree``, by callgrind:
    the difference of two runs (``requests`` apart), so start-up cancels out."""
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        return None
    env = dict(os.environ, PYTHONPATH=tree, PYTHONHASHSEED="0")
    counts = []
    for n in (1000, 1000 + requests):
        with tempfile.NamedTemporaryFile("r", suffix=".callgrind") as out:
            argv = [valgrind, "--tool=callgrind", f"--callgrind-out-file={out.name}"]
            argv += [sys.executable, __file__, "--only", mode, "--requests", str(n)]
            subprocess.run(argv, check=True, capture_output=True, env=env, timeout=900)
            found = re.search(r"^summary: (\d+)", out.read(), re.M)
        if found is None:
            return None
        counts.append(int(found.group(1)))
    return (counts[1] - counts[0]) // requests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--against", help="another checkout, for instruction counts")
    parser.add_argument("--only", choices=MODES, help=argparse.SUPPRESS)  # under strace
    args = parser.parse_args()
    bench = Bench((args.only,) if args.only else MODES)
    try:
        if args.only:
            bench.drive(bench.apps[args.only], args.requests)
            return 0
        for mode in MODES:  # warm every cache once
            bench.cpu_ns(mode, 2000)
        samples: dict[str, list[float]] = {m: [] for m in MODES}
        for _ in range(args.rounds):
            for mode in MODES:
                samples[mode].append(bench.cpu_ns(mode, args.requests))
    finally:
        bench.close()
    check = check_ns()
    bare = statistics.median(samples["bare"])
    print(f"uWSGI connection identity: {args.requests} requests x {args.rounds} rounds, CPU time")
    print(f"python {sys.version.split()[0]}, load average {os.getloadavg()[0]:.1f}")
    print(f"bare app: {bare:.0f} ns/request")
    print(
        f"the fast path's own check: Python path {check:.0f} ns (one byte of the header); "
        "C path one 8-byte load"
    )
    print(f"{'mode':<14} {'added ns/req (median)':>22} {'range':>16} {'getpeername/req':>16}")
    for mode in MODES[1:]:
        added = [s - bare for s in samples[mode]]
        calls = strace_calls(mode, 2000)
        lo, hi = min(added), max(added)
        print(
            f"{mode:<14} {statistics.median(added):>22.0f} {f'{lo:.0f} to {hi:.0f}':>16} "
            f"{'n/a' if calls is None else f'{calls:.2f}':>16}"
        )
    if args.against:
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        print(f"instructions per request (callgrind), here vs {args.against}:")
        for mode in ("bare", "c-fast", "python-fast"):
            mine, theirs = (instructions(tree, mode, 3000) for tree in (here, args.against))
            print(f"  {mode:<12} here {mine}  there {theirs}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
