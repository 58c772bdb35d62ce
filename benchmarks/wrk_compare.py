"""End to end: requests/s of gunicorn serving hello world, with and without WSGIWatch.

    .venv/bin/python benchmarks/wrk_compare.py [--rounds 10] [--duration 3]

For each server setup, one gunicorn serves both: ``/hello`` is the bare app, and
``/watched/hello`` the same app wrapped in WSGIWatch (``bench_apps.side_by_side``; spool
in /dev/shm). One server rather than two: two worker processes running the same code
differ by a few percent on their own (memory layout, cache sets), as much as the effect
we look for. ``wrk -t1 -c8`` loads the two paths in turn, A/B then B/A, round after round,
so drift (other load, the host) hits both alike. We print the median requests/s of each,
the loss of the medians, and the median of the per-round paired losses with its 95%
confidence interval (order statistics: no assumption on how the noise is spread), and the
worker's CPU time per request. Target: loss <= 2%; the verdict is "met" only when the whole
interval is at or below 2%, "NOT met" when it is all above, and "cannot tell" when the noise
is wider than the effect. On a shared VM it mostly is: the same code runs a few percent
faster or slower from one 3 s run to the next (the host's other tenants share the caches
and the core), and CPU time per request moves with it, so it is no steadier.

Hence the interleaved measure: wrk sends bare and wrapped requests alternately to one
sync worker, which notes its thread's CPU time at each app call
(``bench_apps.cycled_side_by_side``); the CPU time of each request cycle is counted for its
kind. Whatever slows the machine slows both kinds alike within the same second, and the
loss a CPU-bound worker takes, 1 - bare / wrapped, comes out with a narrow interval.

On a machine with two CPUs or more, the server's processes run on CPU 0 and wrk on CPU 1
(``sched_setaffinity``): the client and the server no longer fight over a core, or land on
one by chance (unpinned, earlier runs here swung by up to 40%).

Then, inside the worker: one gunicorn sync worker serves the bare app, the floor middleware
and WSGIWatch, each behind the timing shim of ``bench_apps`` (time in the app call +
``close()`` per request, median). That is what the middleware costs where it runs, with
the caches the server leaves it, measured without the noise of the network path.

wrk is Debian's package (``/usr/bin/wrk``). The servers are stopped by their pid (process
group) when each setup is done.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import psutil

BENCH_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(os.path.dirname(BENCH_DIR), "tests"))

from support import servers  # noqa: E402  (real servers on free ports, stopped by pid)

#: (label, worker class, workers, threads)
SETUPS: tuple[tuple[str, str, int, int], ...] = (
    ("gunicorn sync -w 1", "sync", 1, 1),
    ("gunicorn sync -w 2", "sync", 2, 1),
    # One gthread worker: with two, wrk's 8 kept-alive connections split between them at
    # random (a connection stays with the worker that accepted it), and requests/s swung
    # by 2x from run to run.
    ("gunicorn gthread -w 1 --threads 4", "gthread", 1, 4),
)


@dataclass
class WrkResult:
    requests_per_s: float
    requests: int
    errors: int  # socket errors + non-2xx/3xx responses
    latency_ms: float  # wrk's mean latency


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def parse_wrk(text: str) -> WrkResult:
    """Read wrk 4's text summary; raise ValueError naming the output when it has none."""
    rps = re.search(r"Requests/sec:\s+([\d.]+)", text)
    total = re.search(r"(\d+) requests in ", text)
    if rps is None or total is None:
        raise ValueError(f"no summary in wrk output:\n{text}")
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    errors += int(non2xx.group(1)) if non2xx else 0
    lat = re.search(r"Latency\s+([\d.]+)(us|ms|s|m)\b", text)
    latency = float(lat.group(1)) * _UNITS_MS[lat.group(2)] if lat else float("nan")
    return WrkResult(float(rps.group(1)), int(total.group(1)), errors, latency)


#: CPUs for the servers and for wrk, when there are two or more (see the module docstring).
SERVER_CPUS: set[int] = set()
CLIENT_CPUS: set[int] = set()
if len(os.sched_getaffinity(0)) >= 2:
    _cpus = sorted(os.sched_getaffinity(0))
    SERVER_CPUS, CLIENT_CPUS = {_cpus[0]}, set(_cpus[1:2])


def pin_server(server: servers.Server) -> None:
    """Put the server's master and workers on SERVER_CPUS (threads follow their process)."""
    if not SERVER_CPUS:
        return
    master = psutil.Process(server.proc.pid)
    for proc in [master, *master.children(recursive=True)]:
        for thread in proc.threads():
            try:
                os.sched_setaffinity(thread.id, SERVER_CPUS)
            except OSError:  # a thread that just ended
                pass


def _pin_client() -> None:
    if CLIENT_CPUS:
        os.sched_setaffinity(0, CLIENT_CPUS)


def median_interval(values: Sequence[float], confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval for the median: the widest pair of order
    statistics (k-th smallest, k-th largest) that still covers it with ``confidence``.
    With fewer than 6 values no such pair reaches 95%: (-inf, inf)."""
    data = sorted(values)
    n = len(data)
    # P(median below the k-th smallest) = P(Binomial(n, 1/2) < k): choose the largest k
    # with 2 * that <= 1 - confidence.
    best = 0
    tail = 0.0
    for k in range(1, n // 2 + 1):
        tail += math.comb(n, k - 1) / 2**n
        if 2 * tail <= 1 - confidence:
            best = k
    if best == 0:
        return (-math.inf, math.inf)
    return (data[best - 1], data[n - best])


def run_wrk(
    url: str,
    *,
    threads: int = 1,
    connections: int = 8,
    duration_s: float = 5.0,
    script: str | None = None,
    timeout_s: float = 2.0,
) -> WrkResult:
    """One bounded wrk run (killed if it overstays its duration by 30 s)."""
    argv = [
        "wrk",
        f"-t{threads}",
        f"-c{connections}",
        f"-d{duration_s:g}s",
        f"--timeout={timeout_s:g}s",
        *(["-s", script] if script else []),
        url,
    ]
    done = subprocess.run(
        argv, capture_output=True, text=True, timeout=duration_s + 30, preexec_fn=_pin_client
    )
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {done.returncode}: {done.stderr}")
    return parse_wrk(done.stdout)


@contextlib.contextmanager
def spool_tmpdir(prefix: str) -> Iterator[str]:
    """A private spool directory on tmpfs (/dev/shm): a disk-backed mmap costs writebacks."""
    base = "/dev/shm" if os.path.isdir("/dev/shm") else None
    path = tempfile.mkdtemp(prefix=prefix, dir=base)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def bench_gunicorn(
    app: str, worker_class: str, workers: int, threads: int, spool_dir: str
) -> contextlib.AbstractContextManager[servers.Server]:
    """gunicorn serving one of ``bench_apps``; stopped by pid when the block ends."""
    # gunicorn touches a heartbeat file per loop turn: keep it on tmpfs, as its docs advise.
    args = ["--worker-tmp-dir", "/dev/shm"] if os.path.isdir("/dev/shm") else []
    return servers.gunicorn(
        app,
        spool_dir,
        worker_class=worker_class,
        workers=workers,
        threads=threads,
        extra=args,
        env={"PYTHONPATH": BENCH_DIR},
    )


def server_cpu_s(server: servers.Server) -> tuple[float, float]:
    """(user, system) CPU seconds of the server's workers so far (the master idles)."""
    user = system = 0.0
    for proc in psutil.Process(server.proc.pid).children():
        try:
            t = proc.cpu_times()
        except psutil.NoSuchProcess:  # a worker that just exited: not ours to count
            continue
        user += t.user
        system += t.system
    return user, system


def server_runtime_ns(server: servers.Server) -> int | None:
    """Time the server's workers (all their threads) have run on a CPU, in ns, from the
    scheduler's own accounting (``/proc/PID/task/TID/schedstat``, first field). Exact,
    unlike the user/system split, which is sampled at each timer tick (4 ms here): over a
    3 s run that sampling alone blurs CPU per request by a few percent. None when the
    kernel has no schedstat."""
    total = 0
    for proc in psutil.Process(server.proc.pid).children():
        task_dir = f"/proc/{proc.pid}/task"
        try:
            tids = os.listdir(task_dir)
        except OSError:  # a worker that just exited: not ours to count
            continue
        for tid in tids:
            try:
                with open(f"{task_dir}/{tid}/schedstat") as f:
                    total += int(f.read().split()[0])
            except FileNotFoundError:
                if not os.path.exists("/proc/self/schedstat"):
                    return None
            except (OSError, ValueError, IndexError):
                continue
    return total


@dataclass
class Run:
    wrk: WrkResult
    # The workers' CPU time over the run / requests served. The middleware adds user time
    # only (tick-sampled: a rough figure); the total is the scheduler's exact runtime.
    user_us_per_request: float
    cpu_us_per_request: float


def measure(server: servers.Server, path: str, duration_s: float) -> Run:
    user0, sys0 = server_cpu_s(server)
    ran0 = server_runtime_ns(server)
    result = run_wrk(server.url + path, duration_s=duration_s)
    user1, sys1 = server_cpu_s(server)
    ran1 = server_runtime_ns(server)
    n = max(1, result.requests)
    if ran0 is not None and ran1 is not None:
        cpu_us = (ran1 - ran0) / 1e3 / n
    else:
        cpu_us = 1e6 * (user1 + sys1 - user0 - sys0) / n
    return Run(result, 1e6 * (user1 - user0) / n, cpu_us)


@dataclass
class Comparison:
    label: str
    bare: list[Run]
    watched: list[Run]
    spools: int

    def rps(self, runs: list[Run]) -> float:
        return statistics.median(r.wrk.requests_per_s for r in runs)

    def cpu(self, runs: list[Run]) -> float:
        return statistics.median(r.cpu_us_per_request for r in runs)

    def user(self, runs: list[Run]) -> float:
        return statistics.median(r.user_us_per_request for r in runs)

    @property
    def loss_pct(self) -> float:
        return 100 * (1 - self.rps(self.watched) / self.rps(self.bare))

    @property
    def paired_losses(self) -> list[float]:
        """Loss of each A/B pair (runs next to each other in time)."""
        return [
            100 * (1 - w.wrk.requests_per_s / b.wrk.requests_per_s)
            for b, w in zip(self.bare, self.watched, strict=True)
        ]

    @property
    def verdict(self) -> str:
        low, high = median_interval(self.paired_losses)
        if high <= TARGET_LOSS_PCT:
            return "met"
        if low > TARGET_LOSS_PCT:
            return "NOT met"
        return "cannot tell"

    @property
    def errors(self) -> int:
        return sum(r.wrk.errors for r in self.bare + self.watched)


TARGET_LOSS_PCT = 2.0  # issue 2: requests/s lost to WSGIWatch, gunicorn sync, hello world
BARE_PATH = "/hello"  # bench_apps.side_by_side: the bare app ...
WATCHED_PATH = "/watched/hello"  # ... and the same app in WSGIWatch, in the same process


def compare(
    label: str, worker_class: str, workers: int, threads: int, rounds: int, duration_s: float
) -> Comparison:
    app = "bench_apps:side_by_side"
    with (
        spool_tmpdir("wsgiwatch-wrk-") as spool_dir,
        bench_gunicorn(app, worker_class, workers, threads, spool_dir) as server,
    ):
        for path in (BARE_PATH, WATCHED_PATH):  # warm up: imports, first spool, caches
            run_wrk(server.url + path, duration_s=1)
        pin_server(server)  # after the warm-up: gthread starts its threads on demand
        bare: list[Run] = []
        watched: list[Run] = []
        for i in range(rounds):
            order = [(BARE_PATH, bare), (WATCHED_PATH, watched)]
            for path, out in order if i % 2 == 0 else reversed(order):
                out.append(measure(server, path, duration_s))
        spools = sum(1 for n in os.listdir(spool_dir) if n.endswith(".spool"))
    return Comparison(label, bare, watched, spools)


def run_wrk_comparison(rounds: int = 3, duration_s: float = 5.0) -> list[Comparison]:
    if shutil.which("wrk") is None:
        print("wrk not found (Debian package 'wrk'): end-to-end comparison skipped")
        return []
    pinned = (
        f"servers on CPU {sorted(SERVER_CPUS)}, wrk on CPU {sorted(CLIENT_CPUS)}"
        if SERVER_CPUS
        else "one CPU: nothing pinned"
    )
    print(
        f"\nend to end: wrk -t1 -c8 -d{duration_s:g}s against hello world; {rounds} rounds, "
        f"A/B then B/A; medians; {pinned}. Pairs: median paired loss [95% interval]. "
        "Worker CPU us per request: user (tick-sampled) and total (scheduler runtime, exact). "
        f"Load average {os.getloadavg()[0]:.2f}."
    )
    print(
        f"{'server':34} {'bare req/s':>10} {'WSGIWatch':>10} {'loss':>7} "
        f"{'pairs: median [95%]':>24} {'<=2%?':>11} {'user bare':>9} {'WSGIWatch':>9} "
        f"{'added':>6} {'total bare':>10} {'WSGIWatch':>9} {'added':>6} {'errors':>6}"
    )
    results = []
    for label, worker_class, workers, threads in SETUPS:
        c = compare(label, worker_class, workers, threads, rounds, duration_s)
        results.append(c)
        pairs = c.paired_losses
        low, high = median_interval(pairs)
        paired = f"{statistics.median(pairs):+.1f}% [{low:+.1f}..{high:+.1f}]"
        cpu_a, cpu_b = c.cpu(c.bare), c.cpu(c.watched)
        user_a, user_b = c.user(c.bare), c.user(c.watched)
        print(
            f"{label:34} {c.rps(c.bare):10.0f} {c.rps(c.watched):10.0f} "
            f"{c.loss_pct:+6.1f}% {paired:>24} {c.verdict:>11} {user_a:9.1f} {user_b:9.1f} "
            f"{user_b - user_a:+6.1f} {cpu_a:10.1f} {cpu_b:9.1f} {cpu_b - cpu_a:+6.1f} "
            f"{c.errors:6d}",
            flush=True,
        )
        if c.spools != workers:
            print(f"  warning: {c.spools} spool files for {workers} workers")
    return results


_ALTERNATE_LUA = f"""
-- every other request goes through WSGIWatch
local n = 0
request = function()
  n = n + 1
  if n % 2 == 0 then return wrk.format("GET", "{WATCHED_PATH}") end
  return wrk.format("GET", "{BARE_PATH}")
end
"""


@dataclass
class Interleaved:
    bare_us: list[float]  # per run: median CPU us per request cycle
    watched_us: list[float]

    @property
    def losses(self) -> list[float]:
        """Per run: the throughput a CPU-bound worker loses, 1 - bare / watched."""
        return [100 * (1 - b / w) for b, w in zip(self.bare_us, self.watched_us, strict=True)]


def interleaved_cycles(runs: int = 10, duration_s: float = 3.0) -> Interleaved:
    """One gunicorn sync worker, wrk sending bare and wrapped requests alternately; per
    run, the median CPU time of a request cycle of each kind (``cycled_side_by_side``)."""
    out = Interleaved([], [])
    with (
        spool_tmpdir("wsgiwatch-cycles-") as spool_dir,
        bench_gunicorn("bench_apps:cycled_side_by_side", "sync", 1, 1, spool_dir) as server,
        tempfile.NamedTemporaryFile("w", suffix=".lua") as script,
    ):
        script.write(_ALTERNATE_LUA)
        script.flush()
        run_wrk(server.url + "/", duration_s=1, script=script.name)  # warm up
        pin_server(server)
        _get_cycles(server)
        for _ in range(runs):
            run_wrk(server.url + "/", duration_s=duration_s, script=script.name)
            cycles = _get_cycles(server)
            out.bare_us.append(statistics.median(cycles["bare"]) / 1e3)
            out.watched_us.append(statistics.median(cycles["watched"]) / 1e3)
    return out


def _get_cycles(server: servers.Server) -> dict[str, list[int]]:
    with urllib.request.urlopen(server.url + "/_cycles", timeout=10) as response:
        figures: dict[str, list[int]] = json.loads(response.read())
    return figures


def print_interleaved(runs: int = 10, duration_s: float = 3.0) -> Interleaved:
    result = interleaved_cycles(runs, duration_s)
    losses = result.losses
    low, high = median_interval(losses)
    bare, watched = statistics.median(result.bare_us), statistics.median(result.watched_us)
    verdict = (
        "met"
        if high <= TARGET_LOSS_PCT
        else "NOT met"
        if low > TARGET_LOSS_PCT
        else ("cannot tell")
    )
    print(
        f"\ninterleaved: one gunicorn sync worker, wrk -t1 -c8 sending bare and WSGIWatch "
        f"requests alternately, {runs} runs of {duration_s:g}s; the worker's CPU time per "
        "request cycle (app, send, close, accept and parse of the next), median per run"
    )
    print(
        f"  bare {bare:.1f} us, WSGIWatch {watched:.1f} us: +{watched - bare:.2f} us per "
        f"request; loss for a CPU-bound worker {statistics.median(losses):+.2f}% "
        f"[95%: {low:+.2f}..{high:+.2f}] (target <= {TARGET_LOSS_PCT:g}%: {verdict})",
        flush=True,
    )
    return result


#: (label, contender of bench_apps.timed_side_by_side) for the in-server timing
TIMED = (("bare app", "bare"), ("floor", "floor"), ("WSGIWatch", "watched"))


def in_server_timing(rounds: int = 5, duration_s: float = 3.0) -> dict[str, list[float]]:
    """Median ns per request spent in app call + close(), inside one gunicorn sync worker
    that serves all three contenders, one value per round; plus the worker's CPU time per
    request while serving each."""
    out: dict[str, list[float]] = {}
    with (
        spool_tmpdir("wsgiwatch-timed-") as spool_dir,
        bench_gunicorn("bench_apps:timed_side_by_side", "sync", 1, 1, spool_dir) as server,
    ):
        for _, contender in TIMED:  # warm up, then forget what the warm-up measured
            run_wrk(f"{server.url}/{contender}/hello", duration_s=1)
            _get_stats(server, contender)
        pin_server(server)
        for i in range(rounds):
            for label, contender in TIMED if i % 2 == 0 else reversed(TIMED):
                run = measure(server, f"/{contender}/hello", duration_s)
                out.setdefault(label, []).append(float(_get_stats(server, contender)["median_ns"]))
                out.setdefault(label + " cpu", []).append(run.cpu_us_per_request)
    return out


def _get_stats(server: servers.Server, contender: str) -> dict[str, float]:
    with urllib.request.urlopen(f"{server.url}/_stats/{contender}", timeout=10) as response:
        figures: dict[str, float] = json.loads(response.read())
    return figures


def print_in_server(rounds: int = 5, duration_s: float = 3.0) -> dict[str, list[float]]:
    figures = in_server_timing(rounds, duration_s)
    print(
        f"\ninside the worker: one gunicorn sync worker serving all three, wrk -t1 -c8 "
        f"-d{duration_s:g}s per contender, {rounds} rounds; "
        "per request, the time in the app call + close() (a timing shim around each), "
        "median of the per-round medians; and the worker's whole CPU time per request "
        "(scheduler runtime), median of the rounds"
    )
    print(
        f"{'contender':12} {'ns/request':>10} {'added':>7} {'min..max of rounds':>20} "
        f"{'CPU us/req':>10} {'added':>7}"
    )
    bare_cpu = statistics.median(figures["bare app cpu"])
    bare = statistics.median(figures["bare app"])
    for label, _ in TIMED:
        values = figures[label]
        added = "" if label == "bare app" else f"{statistics.median(values) - bare:+7.0f}"
        cpu = statistics.median(figures[label + " cpu"])
        cpu_added = "" if label == "bare app" else f"{cpu - bare_cpu:+7.1f}"
        print(
            f"{label:12} {statistics.median(values):10.0f} {added:>7} "
            f"{f'{min(values):.0f}..{max(values):.0f}':>20} "
            f"{cpu:10.1f} {cpu_added:>7}",
            flush=True,
        )
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10, help="A/B pairs per setup")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per wrk run")
    args = parser.parse_args(argv)
    run_wrk_comparison(args.rounds, args.duration)
    print_interleaved()
    print_in_server()
    return 0


if __name__ == "__main__":
    sys.exit(main())
