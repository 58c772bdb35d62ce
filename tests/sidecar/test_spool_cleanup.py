"""Cleaning up spools is the sidecar's job, on a real gunicorn: the spool of a killed worker
is read to its last record, then removed; living workers keep theirs.

The worker never touches another process's spool (that is how a FIFO in the directory used
to hang the app), so a worker that died while no sidecar ran leaves its file for the next
sidecar to read and remove.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from apps.client import fetch
from support.servers import gunicorn

from wsgiwatch.sidecar.monitor import Monitor
from wsgiwatch.spool.reader import SpoolReader, list_spools


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)


def published(path: str) -> int:
    with SpoolReader(path, track=False) as reader:
        return reader.header().ring_head


def spool_of(spool_dir: str, pid: int) -> str:
    (path,) = [p for p in list_spools(spool_dir) if os.path.basename(p).startswith(f"{pid}-")]
    return path


def poll_until_removed(monitor: Monitor, path: str) -> None:
    def removed() -> bool:
        monitor.poll()
        return not os.path.exists(path)

    wait_until(removed, f"{path} removed by the sidecar")


def routes_seen(monitor: Monitor) -> list[str]:
    return [r["route"] for r in monitor.recent_requests(600)["requests"]]


def test_a_killed_workers_last_records_are_read_then_its_spool_removed(spool_dir: str) -> None:
    with gunicorn("apps.probe:application", spool_dir, workers=2) as server:
        monitor = Monitor(spool_dir, use_kernel=False)
        try:
            # Two slow requests at once: a busy sync worker does not accept, so each worker
            # takes one, and both have a spool.
            with ThreadPoolExecutor(2) as pool:
                both = list(pool.map(lambda n: fetch(server.port, f"/r/both{n}?sleep=0.5"), [0, 1]))
            assert len({r.pid for r in both}) == 2
            dead, alive = both[0].pid, both[1].pid
            path, kept = spool_of(spool_dir, dead), spool_of(spool_dir, alive)
            mine = ["/r/both0"]
            for n in range(10):
                reply = fetch(server.port, f"/r/more{n}")
                if reply.pid == dead:
                    mine.append(f"/r/more{n}")
                monitor.poll()  # as the sidecar polls meanwhile, so the ring never laps it
            # gunicorn calls close(), which writes the record, after the client has its reply.
            wait_until(lambda: published(path) >= len(mine), "records published")
            os.kill(dead, signal.SIGKILL)
            poll_until_removed(monitor, path)
            assert set(mine) <= set(routes_seen(monitor))  # read before the file went
            assert os.path.exists(kept)  # the living keep theirs
            monitor.poll()
            assert [w.pid for w in monitor.registry.live()] == [alive]
        finally:
            monitor.close()


def test_a_spool_left_while_no_sidecar_ran_is_read_by_the_next_one(spool_dir: str) -> None:
    """A worker that ran for an hour and died while no sidecar ran: its last records are
    read by the next sidecar, whatever the file's times say.

    A spool's mtime is no clock of activity: on tmpfs (/dev/shm, the default spool dir),
    writes through a shared mapping to pages already touched do not update it. Backdating it
    stands for a worker created an hour ago.
    """
    with gunicorn("apps.probe:small_ring", spool_dir, workers=1) as server:
        pid = fetch(server.port, "/r/warm").pid
        path = spool_of(spool_dir, pid)
        for n in range(40):  # wraps the 16-record ring: every page it uses is touched
            fetch(server.port, f"/r/old{n}")
        hour_ago = time.time() - 3600
        os.utime(path, (hour_ago, hour_ago))
        last = [f"/r/last{n}" for n in range(10)]
        for route in last:
            assert fetch(server.port, route).pid == pid
        wait_until(lambda: published(path) >= 51, "records published")
        os.kill(pid, signal.SIGKILL)
        reply = fetch(server.port, "/r/replacement")  # a new worker, which cleans nothing up
        assert reply.pid != pid and os.path.exists(path)
        monitor = Monitor(spool_dir, use_kernel=False)
        try:
            poll_until_removed(monitor, path)
            theirs = [r for r in routes_seen(monitor) if r != "/r/replacement"]
            assert theirs[-10:] == last
            assert monitor.dropped_records() >= 51 - 16  # and are counted lost, not hidden
            assert len(list_spools(spool_dir)) == 1  # the replacement's own
        finally:
            monitor.close()


def test_a_missing_directory_is_nothing_to_clean(tmp_path: Path) -> None:
    monitor = Monitor(str(tmp_path / "missing"), use_kernel=False)
    monitor.poll()
    assert monitor.registry.workers == {} and monitor.registry.spool_errors == 0
