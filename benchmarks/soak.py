"""A soak run: real gunicorn + real ``wsgiwatch sidecar`` under steady load for N minutes,
with faults injected on a schedule, checking that every response is accounted for and that
the sidecar neither grows nor leaks.

    .venv/bin/python benchmarks/soak.py                  # 10 minutes, 200 requests/s
    .venv/bin/python benchmarks/soak.py --minutes 2 --rate 100

Setup: gunicorn gthread (2 workers x 4 threads) serving ``bench_apps:application`` (hello
world in WSGIWatch) on 127.0.0.1; ``wsgiwatch sidecar`` polling every 0.5 s. A paced client
(4 threads, kept-alive connections, reconnecting after errors) sends ``--rate`` requests/s,
one in 50 to ``/slow/0.05`` so workers queue now and then.

Faults, on a schedule from the start: a worker SIGKILLed every ``--kill-every`` s, gunicorn
HUPed (all workers replaced) every ``--hup-every`` s, the sidecar stopped (SIGTERM) and
started again every ``--sidecar-restart-every`` s. The sidecar's counters start at zero in
each new process, so at a restart the load pauses until the old sidecar has read everything
(its count stops moving), its last figures are kept, and the new one starts; the pause
lasts about a second. (That a sidecar killed under load loses and double-counts nothing is
checked by its resume-from-cursor tests; here the figure of record is the sum.)

Checks, printed as a table: served (responses with status 200 the client received) equals
counted (``wsgiwatch_requests_total``) plus counted drops
(``wsgiwatch_spool_records_dropped_total``), summed over sidecar processes; a response the
client got from a worker killed before its record was written is the one way to miss, and
is reported as the difference. Per sidecar process: RSS after warm-up (its first 30 s) and
at the end (growth under 5% passes), open file descriptors and threads at both times. The
warm-up is the time the sidecar takes to fill its bounded buffer of recent requests (20,000
requests, for ``/api/requests``) at the paced rate, plus half: until then it grows by
design.

Everything listens on 127.0.0.1; the processes started here are stopped by pid.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field

# Rows appear as they come, also when the output goes to a file.
sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
HERE = os.path.dirname(os.path.abspath(__file__))
VENV_BIN = os.path.dirname(sys.executable)
POLL_INTERVAL_S = 0.5
#: The monitor keeps the last 20,000 requests for /api/requests (monitor.RECENT_KEPT): until
#: that buffer is full a sidecar's memory grows by design. Warm-up is the time to fill it
#: at the paced rate, and half as much again, and at least 30 s.
RECENT_KEPT = 20_000


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing on port {port}")


def proc_status(pid: int) -> dict[str, int]:
    out = {"rss_kb": 0, "threads": 0, "fds": 0}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    out["rss_kb"] = int(line.split()[1])
                elif line.startswith("Threads:"):
                    out["threads"] = int(line.split()[1])
        out["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        pass
    return out


def children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        found.append(int(name))
            except (OSError, ValueError, IndexError):
                pass
    return found


# -- the sidecar -------------------------------------------------------------------------------
@dataclass
class Incarnation:
    proc: subprocess.Popen[bytes]
    port: int
    started: float
    samples: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    counted: float = 0.0
    dropped: float = 0.0

    def scrape(self) -> tuple[float, float]:
        url = f"http://127.0.0.1:{self.port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
        counted = dropped = 0.0
        for line in text.splitlines():
            if line.startswith("wsgiwatch_requests_total"):
                counted += float(line.rsplit(" ", 1)[1])
            elif line.startswith("wsgiwatch_spool_records_dropped_total"):
                dropped += float(line.rsplit(" ", 1)[1])
        self.counted, self.dropped = counted, dropped
        return counted, dropped


def start_sidecar(spool_dir: str, log: str) -> Incarnation:
    port = free_port()
    with open(log, "ab") as out:
        proc = subprocess.Popen(
            [
                os.path.join(VENV_BIN, "wsgiwatch"),
                "sidecar",
                "--dir",
                spool_dir,
                "--listen",
                f"127.0.0.1:{port}",
                "--poll-interval",
                str(POLL_INTERVAL_S),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_port(port)
    return Incarnation(proc, port, time.monotonic())


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# -- the load ----------------------------------------------------------------------------------
class Load:
    """Paced requests from a few threads, each on a kept-alive connection."""

    def __init__(self, port: int, rate: float, threads: int = 4) -> None:
        self.port = port
        self.interval = threads / rate
        self.served = 0
        self.failed = 0
        self.in_flight = 0
        self._lock = threading.Lock()
        self._run = threading.Event()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(n,), daemon=True) for n in range(threads)
        ]

    def start(self) -> None:
        self._run.set()
        for t in self._threads:
            t.start()

    def pause(self) -> None:
        self._run.clear()
        deadline = time.monotonic() + 10
        while self.in_flight and time.monotonic() < deadline:
            time.sleep(0.01)

    def resume(self) -> None:
        self._run.set()

    def stop(self) -> None:
        self._stop.set()
        self._run.set()
        for t in self._threads:
            t.join(10)

    def _loop(self, n: int) -> None:
        rng = random.Random(n)
        conn: http.client.HTTPConnection | None = None
        next_at = time.monotonic()
        count = 0
        while not self._stop.is_set():
            self._run.wait()
            if self._stop.is_set():
                break
            next_at = max(next_at + self.interval, time.monotonic() - 1)
            delay = next_at - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            count += 1
            path = "/slow/0.05" if rng.random() < 0.02 else f"/fast/{count}"
            with self._lock:
                self.in_flight += 1
            try:
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                conn.request("GET", path)
                reply = conn.getresponse()
                reply.read()
                ok = reply.status == 200
            except (OSError, http.client.HTTPException):
                ok = False
                if conn is not None:
                    conn.close()
                conn = None
            with self._lock:
                self.in_flight -= 1
                if ok:
                    self.served += 1
                else:
                    self.failed += 1
        if conn is not None:
            conn.close()


# -- the run ----------------------------------------------------------------------------------
def settle(side: Incarnation, total_before: float, served: int, timeout: float = 15.0) -> None:
    """Wait until the sidecar has read everything served so far, or its count has stopped
    moving for three polls (what is missing then stays missing)."""
    deadline = time.monotonic() + timeout
    last, still = -1.0, 0
    while time.monotonic() < deadline:
        counted, dropped = side.scrape()
        now = counted + dropped
        if total_before + now >= served:
            return
        still = still + 1 if now == last else 0
        if still >= 3:
            return
        last = now
        time.sleep(POLL_INTERVAL_S)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--kill-every", type=float, default=60.0)
    parser.add_argument("--hup-every", type=float, default=150.0)
    parser.add_argument("--sidecar-restart-every", type=float, default=300.0)
    parser.add_argument("--report-every", type=float, default=30.0)
    args = parser.parse_args()
    # Stopped by a signal, still stop what was started (a background job ignores SIGINT).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    duration = args.minutes * 60
    args.warmup_s = max(30.0, 1.5 * RECENT_KEPT / args.rate)
    spool_dir = tempfile.mkdtemp(prefix="wsgiwatch-soak-")
    os.chmod(spool_dir, 0o700)
    log = os.path.join(spool_dir, "..", os.path.basename(spool_dir) + ".log")
    port = free_port()
    env = dict(os.environ, WSGIWATCH_DIR=spool_dir, PYTHONPATH=HERE)
    gunicorn = subprocess.Popen(
        [
            os.path.join(VENV_BIN, "gunicorn"),
            "--bind",
            f"127.0.0.1:{port}",
            "--workers",
            "2",
            "--threads",
            "4",
            "--worker-class",
            "gthread",
            "--log-level",
            "warning",
            "bench_apps:application",
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    sidecars: list[Incarnation] = []
    faults = {"worker kills": 0, "HUPs": 0, "sidecar restarts": 0}
    load = Load(port, args.rate)
    try:
        wait_port(port)
        sidecars.append(start_sidecar(spool_dir, log))
        began = time.monotonic()
        load.start()
        next_kill, next_hup = args.kill_every, args.hup_every
        next_restart, next_report = args.sidecar_restart_every, args.report_every
        print(f"soak: {args.minutes:g} min at {args.rate:g} req/s; sidecar log {log}")
        print(
            f"{'t (s)':>6} {'served':>8} {'counted':>8} {'drops':>6} {'failed':>6} "
            f"{'RSS MB':>7} {'fds':>4} {'thr':>4}  faults so far"
        )
        while (elapsed := time.monotonic() - began) < duration:
            time.sleep(1.0)
            side = sidecars[-1]
            if len(side.samples) == 0 or time.monotonic() - side.samples[-1][0] >= 5:
                side.samples.append((time.monotonic(), proc_status(side.proc.pid)))
            if elapsed >= next_kill:
                workers = children(gunicorn.pid)
                if workers:
                    os.kill(random.choice(workers), signal.SIGKILL)
                    faults["worker kills"] += 1
                next_kill += args.kill_every
            if elapsed >= next_hup:
                gunicorn.send_signal(signal.SIGHUP)
                faults["HUPs"] += 1
                next_hup += args.hup_every
            if elapsed >= next_restart:
                load.pause()
                before = sum(s.counted + s.dropped for s in sidecars[:-1])
                settle(side, before, load.served)
                side.samples.append((time.monotonic(), proc_status(side.proc.pid)))
                stop(side.proc)
                sidecars.append(start_sidecar(spool_dir, log))
                faults["sidecar restarts"] += 1
                load.resume()
                next_restart += args.sidecar_restart_every
            if elapsed >= next_report:
                side = sidecars[-1]
                counted, dropped = side.scrape()
                prior_c = sum(s.counted for s in sidecars[:-1])
                prior_d = sum(s.dropped for s in sidecars[:-1])
                st = proc_status(side.proc.pid)
                print(
                    f"{elapsed:6.0f} {load.served:8d} {prior_c + counted:8.0f} "
                    f"{prior_d + dropped:6.0f} {load.failed:6d} {st['rss_kb'] / 1024:7.1f} "
                    f"{st['fds']:4d} {st['threads']:4d}  "
                    + ", ".join(f"{k} {v}" for k, v in faults.items())
                )
                next_report += args.report_every
        load.pause()
        side = sidecars[-1]
        settle(side, sum(s.counted + s.dropped for s in sidecars[:-1]), load.served)
        side.samples.append((time.monotonic(), proc_status(side.proc.pid)))
    finally:
        load.stop()
        for side in sidecars:
            stop(side.proc)
        stop(gunicorn)
    return report(args, load, sidecars, faults)


def report(
    args: argparse.Namespace, load: Load, sidecars: list[Incarnation], faults: dict[str, int]
) -> int:
    counted = sum(s.counted for s in sidecars)
    dropped = sum(s.dropped for s in sidecars)
    missing = load.served - counted - dropped
    print()
    print("| figure | value |\n|---|---|")
    print(f"| duration | {args.minutes:g} min at {args.rate:g} req/s (paced client) |")
    print("| faults | " + ", ".join(f"{v} {k}" for k, v in faults.items()) + " |")
    print(f"| served (200s the client received) | {load.served} |")
    print(f"| failed at the client (killed workers' connections) | {load.failed} |")
    print(f"| counted by the sidecars | {counted:.0f} |")
    print(f"| counted drops | {dropped:.0f} |")
    print(f"| served - counted - drops | {missing:.0f} |")
    ok = missing == 0
    print()
    print(f"Warm-up: the first {args.warmup_s:.0f} s of each sidecar process.")
    print("| sidecar | lived s | RSS after warm-up MB | RSS at end MB | growth | fds | threads |")
    print("|---|---|---|---|---|---|---|")
    for n, side in enumerate(sidecars):
        samples = side.samples
        if len(samples) < 2:
            continue
        t0 = side.started
        warm = [s for t, s in samples if t - t0 >= args.warmup_s] or [samples[-1][1]]
        first_warm = statistics.median(s["rss_kb"] for s in warm[:3])
        end = samples[-1][1]
        growth = end["rss_kb"] / first_warm - 1 if first_warm else 0.0
        lived = samples[-1][0] - t0
        fds = f"{warm[0]['fds']} -> {end['fds']}"
        threads = f"{warm[0]['threads']} -> {end['threads']}"
        ok = ok and growth < 0.05 and end["fds"] <= warm[0]["fds"] + 2
        ok = ok and end["threads"] <= warm[0]["threads"]
        print(
            f"| {n + 1} | {lived:.0f} | {first_warm / 1024:.1f} | {end['rss_kb'] / 1024:.1f} | "
            f"{growth * 100:+.1f}% | {fds} | {threads} |"
        )
    print()
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
