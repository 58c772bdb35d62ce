"""What one finished request costs the sidecar, in process: CPU per record through
:meth:`Monitor.poll`, without a server, a kernel or a machine's noise.

    .venv/bin/python benchmarks/sidecar_records.py [--records 550] [--rounds 40] [--profile]

Two spools of the default geometry (64 slots, 4,096 records, 1,024 accept events),
capacity 4 each, as the gunicorn gthread 2 x 4 of ``sidecar_cost.py``; their fake processes
live in a fake procfs. Each round writes ``--records`` finished records into each spool
(outside the timing) as keep-alive traffic from 100 connections looks (one route, status
200, a kept-alive connection after its first request), then times one ``poll()`` with
``time.process_time``; an idle poll (no new record) is timed in the same round and
subtracted. Two rows: without the accept hook (no source says when a request came: no
wait to account), and with it, as ``sidecar_cost.py``'s gunicorn records requests (hook
times, arrival from the server; 100 idle connections accepted and pending): that row is
the one to compare with it. The kernel view is off: its cost is per poll, not per record
(``sidecar_cost.py`` measures it). ``--profile`` prints cProfile's top functions of the
record polls (cProfile inflates per-call work).
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import statistics
import sys
import tempfile
import time

sys.path.insert(
    0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests")
)

from support.sidecar_support import FakeProc, Req, finish, make_spool

from wsgiwatch.sidecar.monitor import Monitor
from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.writer import DEFAULT_ACCEPTS, DEFAULT_RING, SpoolWriter

PIDS = (5_300_001, 5_300_002)
CONNECTIONS = 100
IDLE_CONNECTIONS = 100


def fill(writers: list[SpoolWriter], count: int, *, hook: bool, serial: list[int]) -> None:
    """``count`` finished records per writer, ending a millisecond ago."""
    end = time.monotonic_ns() - 1_000_000
    for w_index, writer in enumerate(writers):
        for k in range(count):
            n = serial[0] = serial[0] + 1
            entry = end - (count - k) * 200_000
            port = 40000 + (n % CONNECTIONS) * 2 + w_index
            req = Req(
                entry_ns=entry,
                exit_ns=entry + 150_000,
                route="/",
                peer_port=port,
                flags=fmt.FLAG_REUSED_CONNECTION if n > CONNECTIONS else 0,
            )
            if hook:  # as the benchmark app's records read (gunicorn with the hook)
                req.source = fmt.SOURCE_HOOK
                req.accept_ns = entry - 400_000_000
                req.arrival_ns = entry - 60_000
                req.flags |= fmt.FLAG_ARRIVAL_SERVER
            finish(writer, req)


def run(records: int, rounds: int, *, hook: bool, profile: cProfile.Profile | None) -> list[float]:
    """Microseconds of CPU per record, one figure per round."""
    directory = tempfile.mkdtemp(prefix="wsgiwatch-bench-", dir="/dev/shm")
    proc = FakeProc()
    writers = []
    for pid in PIDS:
        proc.add(pid, 1000)
        writers.append(
            make_spool(
                directory,
                pid,
                capacity=4,
                slot_count=64,
                ring_capacity=DEFAULT_RING,
                accept_capacity=DEFAULT_ACCEPTS,
            )
        )
    if hook:  # idle keep-alive connections, accepted and never used: pending accepts
        now = time.monotonic_ns()
        for n, writer in enumerate(writers):
            writer.set_flags(fmt.HEADER_FLAG_ACCEPT_HOOK)
            for k in range(IDLE_CONNECTIONS // 2):
                writer.write_accept(now, now, 50000 + 2 * k + n, 8000, 5, b"127.0.0.1")
    monitor = Monitor(directory, procfs_root=proc.root, use_kernel=False)
    serial = [0]
    per_record: list[float] = []
    try:
        for _ in range(3):  # warm up: routes, connections, history
            fill(writers, records, hook=hook, serial=serial)
            monitor.poll()
        for _ in range(rounds):
            fill(writers, records, hook=hook, serial=serial)
            began = time.process_time()
            if profile is not None:
                profile.enable()
            monitor.poll()
            if profile is not None:
                profile.disable()
            busy = time.process_time() - began
            began = time.process_time()
            monitor.poll()
            idle = time.process_time() - began
            per_record.append((busy - idle) / (records * len(writers)) * 1e6)
    finally:
        monitor.close()
        for writer in writers:
            writer.close()
        proc.cleanup()
        os.rmdir(directory)
    return per_record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=550, help="per spool per poll")
    parser.add_argument("--rounds", type=int, default=40)
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    print(f"{args.records} records per spool per poll, 2 spools, {args.rounds} rounds")
    print(f"{'records':<28} {'us CPU per record: median':>26} {'min':>7} {'max':>7}")
    for hook in (False, True):
        profile = cProfile.Profile() if args.profile else None
        figures = run(args.records, args.rounds, hook=hook, profile=profile)
        name = "accept hook times" if hook else "keep-alive, no hook"
        print(
            f"{name:<28} {statistics.median(figures):>26.2f} "
            f"{min(figures):>7.2f} {max(figures):>7.2f}"
        )
        if profile is not None:
            pstats.Stats(profile).sort_stats("tottime").print_stats(18)


if __name__ == "__main__":
    main()
