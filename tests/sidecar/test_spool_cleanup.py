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

from apps.client import fetch
from support.servers import Server, gunicorn

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


def serve_then_kill(server: Server, spool_dir: str, routes: list[str]) -> tuple[int, str]:
    """Requests to the one worker, then SIGKILL it once all are recorded; (pid, its spool)."""
    pid = fetch(server.port, "/r/warm").pid
    (path,) = list_spools(spool_dir)
    for route in routes:
        assert fetch(server.port, route).pid == pid
    # gunicorn calls close(), which writes the record, after the client has its reply.
    wait_until(lambda: published(path) >= len(routes) + 1, "records published")
    os.kill(pid, signal.SIGKILL)
    return pid, path


def poll_until_removed(monitor: Monitor, path: str) -> None:
    def removed() -> bool:
        monitor.poll()
        return not os.path.exists(path)

    wait_until(removed, f"{path} removed by the sidecar")


def routes_seen(monitor: Monitor) -> list[str]:
    return [r["route"] for r in monitor.recent_requests(600)["requests"]]


def test_a_killed_workers_last_records_are_read_then_its_spool_removed(spool_dir: str) -> None:
    with gunicorn("apps.probe:application", spool_dir, workers=1) as server:
        monitor = Monitor(spool_dir, use_kernel=False)
        try:
            monitor.poll()
            last = [f"/r/last{n}" for n in range(10)]
            dead, path = serve_then_kill(server, spool_dir, last)
            poll_until_removed(monitor, path)
            assert routes_seen(monitor)[-10:] == last  # read before the file went
            # The replacement records in a file of its own, under the index it took over.
            reply = fetch(server.port, "/r/after")
            assert reply.pid != dead
            monitor.poll()
            (live,) = monitor.registry.live()
            assert (live.pid, live.index) == (reply.pid, 0)
            assert [os.path.basename(p) for p in list_spools(spool_dir)] == [
                os.path.basename(live.reader.path)
            ]
        finally:
            monitor.close()


def test_a_spool_left_while_no_sidecar_ran_is_read_by_the_next_one(spool_dir: str) -> None:
    with gunicorn("apps.probe:application", spool_dir, workers=1) as server:
        last = [f"/r/unread{n}" for n in range(5)]
        _, path = serve_then_kill(server, spool_dir, last)
        fetch(server.port, "/r/replacement")  # a new worker came, and cleaned nothing up
        assert os.path.exists(path)
        monitor = Monitor(spool_dir, use_kernel=False)
        try:
            poll_until_removed(monitor, path)
            assert set(last) <= set(routes_seen(monitor))
            assert len(list_spools(spool_dir)) == 1  # the replacement's own
        finally:
            monitor.close()
