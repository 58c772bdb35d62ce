"""What reading spools with ``pread`` costs against the mmap reader it replaced.

    .venv/bin/python benchmarks/spool_read.py                    # 64 workers, 50 records
    .venv/bin/python benchmarks/spool_read.py --workers 64 --records 500 --rounds 200

Makes ``--workers`` spools of the default geometry (64 slots, 4,096 records, 1,024 accept
events) in a tmpfs directory, as many gunicorn workers would. Each round, every spool gets
``--records`` new records, 2 busy slots and 2 accept events (written outside the timing),
then one sidecar poll's worth of reading is timed: ``header()``, ``read_records()``,
``scoreboard()`` and ``read_accepts()`` on every spool. The old reader is the mmap one from
git (``git show REF:wsgiwatch/spool/reader.py``, default the first commit of this branch's
parent ``5e03e1c``), loaded as a module; both read the same files, rounds interleaved.
Prints the median time per poll of each and their ratio.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import subprocess
import sys
import tempfile
import time
from types import ModuleType
from typing import Any

from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool import reader as new_reader
from wsgiwatch.spool.writer import DEFAULT_ACCEPTS, DEFAULT_RING, DEFAULT_SLOTS, SpoolWriter

FAKE_PID = 5_200_000


def old_reader_module(ref: str) -> ModuleType:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    source = subprocess.run(
        ["git", "-C", root, "show", f"{ref}:wsgiwatch/spool/reader.py"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    path = os.path.join(tempfile.mkdtemp(prefix="wsgiwatch-bench-"), "old_reader.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("old_reader", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["old_reader"] = module
    spec.loader.exec_module(module)
    return module


def make_spool(directory: str, n: int) -> SpoolWriter:
    import mmap

    pid = FAKE_PID + n
    path = os.path.join(directory, fmt.spool_name(pid, 1000))
    size = fmt.spool_size(DEFAULT_SLOTS, DEFAULT_RING, DEFAULT_ACCEPTS)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    os.posix_fallocate(fd, 0, size)
    mm = mmap.mmap(fd, size)
    os.close(fd)
    fmt.HEADER_IDENTITY.pack_into(
        mm,
        0,
        fmt.MAGIC,
        fmt.VERSION,
        fmt.HEADER_SIZE,
        pid,
        1000,
        time.time_ns(),
        time.monotonic_ns(),
        DEFAULT_SLOTS,
        fmt.SLOT_SIZE,
        DEFAULT_RING,
        fmt.RECORD_SIZE,
        DEFAULT_ACCEPTS,
        fmt.ACCEPT_SIZE,
        2,
        1,
    )
    return SpoolWriter(mm, path, pid, DEFAULT_SLOTS, DEFAULT_RING, DEFAULT_ACCEPTS)


def publish(writer: SpoolWriter, count: int) -> None:
    mm = writer.mm
    now = time.monotonic_ns()
    for _ in range(count):
        seq = next(writer.record_seq)
        off = writer.record_base + (seq % writer.ring_capacity) * fmt.RECORD_SIZE
        mm[off : off + fmt.SLOT_SIZE] = fmt.SLOT.pack(
            seq + 1, now, now - 1000, now - 900, 77, 40000, 1, 1, b"127.0.0.1", b"/bench/:id"
        )
        fmt.RECORD_EXIT.pack_into(
            mm, off + fmt.RECORD_EXIT_OFFSET, now + 10, now + 20, 0, 100, 200, 0, 8000, 0
        )
        fmt.U64.pack_into(mm, off + fmt.RECORD_SEQ_OFFSET, seq + 1)
        fmt.U64.pack_into(mm, fmt.OFF_RING_HEAD, seq + 1)
    for slot in (0, 1):
        off = fmt.HEADER_SIZE + slot * fmt.SLOT_SIZE
        mm[off : off + fmt.SLOT_SIZE] = fmt.SLOT.pack(
            slot + 1, now, 0, 0, 78, 41000, 1, 0, b"127.0.0.1", b"/running"
        )
    for _ in range(2):
        writer.write_accept(now, 0, 42000, 8000, 5, b"127.0.0.1")


def poll(readers: list[Any]) -> tuple[float, int]:
    began = time.perf_counter()
    count = 0
    for r in readers:
        r.header()
        count += len(r.read_records().records)
        r.scoreboard()
        r.read_accepts()
    return time.perf_counter() - began, count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=64)
    parser.add_argument("--records", type=int, default=50, help="new records per spool per poll")
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--old-ref", default="5e03e1c")
    args = parser.parse_args()
    old = old_reader_module(args.old_ref)
    directory = tempfile.mkdtemp(prefix="wsgiwatch-bench-", dir="/dev/shm")
    writers = [make_spool(directory, n) for n in range(args.workers)]
    paths = [w.path for w in writers]
    readers = {
        "mmap (before)": [old.SpoolReader(p, track=True) for p in paths],
        "pread (now)": [new_reader.SpoolReader(p, track=True) for p in paths],
    }
    times: dict[str, list[float]] = {name: [] for name in readers}
    try:
        for _ in range(args.rounds):
            for w in writers:
                publish(w, args.records)
            for name, group in readers.items():
                elapsed, count = poll(group)
                assert count == args.workers * args.records, (name, count)
                times[name].append(elapsed)
    finally:
        for group in readers.values():
            for r in group:
                r.close()
        for w in writers:
            w.close()
        os.rmdir(directory)
    print(
        f"{args.workers} spools, {args.records} new records each per poll, {args.rounds} polls "
        "(median, with min-max)"
    )
    base = statistics.median(times["mmap (before)"])
    for name, series in times.items():
        med = statistics.median(series)
        records = args.workers * args.records
        per_record = f"  {med / records * 1e6:.2f} us per record" if records else ""
        print(
            f"  {name:14s} {med * 1e3:7.2f} ms per poll  ({min(series) * 1e3:.2f}-"
            f"{max(series) * 1e3:.2f})  {med / base:.2f}x{per_record}"
        )


if __name__ == "__main__":
    main()
