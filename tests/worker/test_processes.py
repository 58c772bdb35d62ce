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
from wsgiwatch.worker.process_spool import STALE_SPOOL_AGE_S, remove_stale_spools


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


def test_spool_of_a_dead_worker_is_left_for_a_reader(spool_dir: str) -> None:
    with gunicorn("apps.probe:application", spool_dir, workers=2) as server:
        a, b = both_workers(server, "before")
        dead, alive = a.pid, b.pid
        for n in range(5):  # more records for the worker that is going to die
            reply = fetch(server.port, f"/r/more{n}")
            if reply.pid == dead:
                break
        dead_spool = f"{spool_dir}/{dead}-{start_ticks(dead)}{fmt.SUFFIX}"
        kill_worker(dead)
        with ThreadPoolExecutor(1) as pool:
            # Keep the live worker busy, so that only the replacement can answer.
            busy = pool.submit(fetch, server.port, "/r/busy?sleep=1.5")
            time.sleep(0.2)
            fresh = new_worker_reply(server, {dead, alive}, "after")
            busy.result()
        # The replacement opened its spool, which is when stale spools are cleaned up:
        # the dead worker's file is young, so it must still be there, whole.
        assert os.path.exists(dead_spool)
        with SpoolReader(dead_spool, track=False) as reader:
            assert reader.pid == dead
            routes = [r.route for r in reader.read_records().records]
        assert "/r/before-a" in routes or "/r/before-b" in routes
        assert len(list_spools(spool_dir)) == 3
        # Past the age, only the dead worker's file goes; living workers keep theirs,
        # however old their files are.
        assert remove_stale_spools(spool_dir) == 0
        later = time.time() + STALE_SPOOL_AGE_S + 1
        assert remove_stale_spools(spool_dir, now=later) == 1
        assert not os.path.exists(dead_spool)
        left = sorted(int(os.path.basename(p).split("-")[0]) for p in list_spools(spool_dir))
        assert left == sorted([alive, fresh.pid])


def test_remove_stale_spools_removes_only_dead_processes_past_the_age(spool_dir: str) -> None:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(10)  # reaped: its pid is a dead process now
    me = os.getpid()
    names = {
        "alive": f"{me}-{start_ticks(me)}.spool",  # this process
        "recycled": f"{me}-{start_ticks(me) - 1}.spool",  # same pid, another start: dead
        "dead": f"{child.pid}-12345.spool",
        "not_a_spool": f"{child.pid}-12345.txt",
        "bad_name": "worker-x.spool",
    }
    for name in names.values():
        with open(os.path.join(spool_dir, name), "wb"):
            pass
    now = time.time()
    assert remove_stale_spools(spool_dir, now=now) == 0  # dead, but not old enough
    assert remove_stale_spools(spool_dir, now=now + STALE_SPOOL_AGE_S - 5) == 0
    assert remove_stale_spools(spool_dir, now=now + STALE_SPOOL_AGE_S + 5) == 2
    left = set(os.listdir(spool_dir))
    assert left == {names["alive"], names["not_a_spool"], names["bad_name"]}
    assert remove_stale_spools(os.path.join(spool_dir, "missing")) == 0


def test_spool_of_a_long_lived_worker_is_not_removed_the_moment_it_dies(spool_dir: str) -> None:
    """A worker that ran for an hour and died a moment ago: its last records are unread.

    The spool's mtime is no clock of activity: on tmpfs (/dev/shm, the default spool dir),
    writes through a shared mapping to pages already touched do not update it, so it stays
    at about the time the file was created. Backdating it stands for a worker created an
    hour ago; the requests after that are what such a worker would write meanwhile.
    """
    with gunicorn("apps.probe:small_ring", spool_dir, workers=1) as server:
        first = fetch(server.port, "/r/warm")
        (path,) = list_spools(spool_dir)
        for n in range(40):  # wraps the 16-record ring: every page it uses is touched
            fetch(server.port, f"/r/old{n}")
        hour_ago = time.time() - 3600
        os.utime(path, (hour_ago, hour_ago))
        for n in range(10):  # the worker's last records, just before it dies
            fetch(server.port, f"/r/last{n}")
        # gunicorn calls close(), which writes the record, after the client has its reply.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with SpoolReader(path, track=False) as reader:
                if reader.header().ring_head >= 51:
                    break
            time.sleep(0.01)
        kill_worker(first.pid)
        new_worker_reply(server, {first.pid}, "after")
        assert os.path.exists(path), "the dead worker's spool was removed as soon as it died"
        with SpoolReader(path, track=False) as reader:
            last = [r.route for r in reader.read_records().records]
        assert last[-10:] == [f"/r/last{n}" for n in range(10)]
