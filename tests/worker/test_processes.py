"""One spool per worker process: gunicorn ``--preload`` forks workers from a master that built
the app, and every worker must record into a file of its own, named after itself.

Which worker served a request is known from the response (apps.probe answers its pid), and
the record of each request is found by a unique route (``/r/<token>``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from apps.client import Reply, fetch
from support.servers import Server, gunicorn

from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.reader import Record, SpoolReader, list_spools


def start_ticks(pid: int) -> int:
    """Field 22 of /proc/PID/stat, read here independently of wsgiwatch.kernel.procfs."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def records_by_pid(spool_dir: str, expected: int) -> dict[int, list[Record]]:
    """Every spool's records, once ``expected`` records were published in all (or 5 s).

    A worker writes a record when the server calls ``close()`` on the response, which may
    be a moment after the client has read the last byte: poll for the last ones.
    """
    readers = [SpoolReader(path, track=False) for path in list_spools(spool_dir)]
    try:
        out: dict[int, list[Record]] = {reader.pid: [] for reader in readers}
        deadline = time.monotonic() + 5
        while sum(map(len, out.values())) < expected and time.monotonic() < deadline:
            for reader in readers:
                out[reader.pid].extend(reader.read_records().records)
            time.sleep(0.005)
        return out
    finally:
        for reader in readers:
            reader.close()


def both_workers(server: Server, tag: str) -> tuple[Reply, Reply]:
    """Two slow requests at once: a busy sync worker does not accept, so each worker gets one."""
    with ThreadPoolExecutor(2) as pool:
        first, second = pool.map(
            lambda name: fetch(server.port, f"/r/{tag}-{name}?sleep=0.4"), ("a", "b")
        )
    assert first.pid != second.pid, "both slow requests went to one worker"
    return first, second


def test_preload_each_worker_records_into_its_own_spool(spool_dir: str) -> None:
    with gunicorn("apps.probe:application", spool_dir, workers=2, extra=["--preload"]) as server:
        master = server.proc.pid
        replies = dict(zip(("/r/slow-a", "/r/slow-b"), both_workers(server, "slow"), strict=True))
        for n in range(20):
            replies[f"/r/fast{n}"] = fetch(server.port, f"/r/fast{n}")
        workers = {r.pid for r in replies.values()}
        assert len(workers) == 2 and master not in workers
        assert all(parent_of(pid) == master for pid in workers)
        names = sorted(os.path.basename(p) for p in list_spools(spool_dir))
        assert names == sorted(f"{pid}-{start_ticks(pid)}{fmt.SUFFIX}" for pid in workers)
        assert not any(name.startswith(f"{master}-") for name in names)  # the master wrote none
        for path in list_spools(spool_dir):
            with SpoolReader(path, track=False) as reader:
                header = reader.header()
            assert header.pid in workers
            assert header.ppid == master
            assert header.start_ticks == start_ticks(header.pid)
            assert os.path.basename(path) == fmt.spool_name(header.pid, header.start_ticks)
            assert header.server_software.startswith("gunicorn")
            assert header.flags & fmt.HEADER_FLAG_MULTIPROCESS
        found = records_by_pid(spool_dir, len(replies))
    # Each request is in the spool of the worker that answered it, and nowhere else.
    routes = {pid: [r.route for r in records] for pid, records in found.items()}
    for route, reply in replies.items():
        assert routes[reply.pid].count(route) == 1, (route, reply.pid)
        assert all(route not in got for pid, got in routes.items() if pid != reply.pid)
    assert sum(map(len, routes.values())) == len(replies)
    for pid, records in found.items():
        assert all(r.pid == pid for r in records)
        assert sorted(r.request for r in records) == list(range(1, len(records) + 1))


def new_worker_reply(server: Server, known: set[int], tag: str) -> Reply:
    """A reply from a worker not in ``known`` (the master's replacement), within 15 s."""
    deadline = time.monotonic() + 15
    n = 0
    while time.monotonic() < deadline:
        n += 1
        reply = fetch(server.port, f"/r/{tag}{n}")
        if reply.pid not in known:
            return reply
        time.sleep(0.05)
    raise TimeoutError("gunicorn started no replacement worker")


def kill_worker(pid: int) -> None:
    """SIGKILL one worker of a server this test started, and wait until it is gone."""
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().split(")")[-1].split()[0] in ("Z", "X"):
                break  # dead; the master has not reaped it yet
        time.sleep(0.02)


def test_a_new_worker_touches_no_spool_but_its_own(spool_dir: str) -> None:
    """A worker opens its own spool and nothing else in the directory: a FIFO named like a
    spool (opening it for reading would block the worker for good), a dead worker's old
    spool and junk files are left exactly as they were. Cleaning up is the sidecar's job."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(10)  # reaped: a pid that is no process now
    fifo = os.path.join(spool_dir, f"{child.pid + 1_000_000}-1{fmt.SUFFIX}")
    os.mkfifo(fifo, 0o600)
    dead = os.path.join(spool_dir, f"{child.pid}-12345{fmt.SUFFIX}")
    junk = os.path.join(spool_dir, "notes.txt")
    for path, data in ((dead, b"not a spool" * 100), (junk, b"x")):
        with open(path, "wb") as f:
            f.write(data)
        hour_ago = time.time() - 3600  # old enough for any age-based clean-up
        os.utime(path, (hour_ago, hour_ago))
    before = {path: os.stat(path) for path in (fifo, dead, junk)}
    with gunicorn("apps.probe:application", spool_dir, workers=1) as server:
        reply = fetch(server.port, "/r/first", timeout=10)
        assert reply.status == 200
        own = os.path.join(spool_dir, f"{reply.pid}-{start_ticks(reply.pid)}{fmt.SUFFIX}")
        assert sorted(os.listdir(spool_dir)) == sorted(
            os.path.basename(p) for p in (fifo, dead, junk, own)
        )
    for path, st in before.items():
        now = os.stat(path)
        assert (now.st_mode, now.st_size, now.st_mtime_ns, now.st_ino) == (
            st.st_mode,
            st.st_size,
            st.st_mtime_ns,
            st.st_ino,
        ), path
