"""A worker's spool lost under it, with real gunicorn workers: the file truncated while a
request is running (a write into it then raises SIGBUS, which the C accelerator catches),
or the whole spool directory removed under load. The app answers 200 throughout, the worker
lives on, recording resumes in a new file, and that file's header counts what was lost, so
that every response served is either a record or a counted drop.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from apps.client import Reply, fetch
from support.middleware_support import (
    SMALL,
    call_app,
    environ_for,
    read_spools,
    wait_for,
)
from support.servers import gunicorn

from wsgiwatch import WSGIWatch
from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.reader import SpoolReader, list_spools
from wsgiwatch.worker import settings, spool_check


def counter(path: str, offset: int) -> int:
    with open(path, "rb") as f:
        f.seek(offset)
        value: int = fmt.U64.unpack(f.read(8))[0]
    return value


def spool_of(spool_dir: str, pid: int) -> str | None:
    """The path of ``pid``'s spool, once it is there with its magic written."""
    for path in list_spools(spool_dir):
        if os.path.basename(path).startswith(f"{pid}-"):
            with open(path, "rb") as f:
                if f.read(len(fmt.MAGIC)) == fmt.MAGIC:
                    return path
    return None


def routes_in(path: str) -> list[str]:
    with SpoolReader(path, track=False) as reader:
        return [r.route for r in reader.read_records().records]


def test_truncating_a_live_spool_mid_request_kills_neither_the_request_nor_the_worker(
    spool_dir: str,
) -> None:
    with gunicorn("apps.probe:application", spool_dir, workers=1) as server:
        first = fetch(server.port, "/r/first")
        path = wait_for("the worker's spool", lambda: spool_of(spool_dir, first.pid))
        inode = os.stat(path).st_ino
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(fetch, server.port, "/r/slow?sleep=0.6")

            def running() -> bool:  # on the scoreboard: the slot was written at entry
                return any(
                    slot.path == "/r/slow" for s in read_spools(spool_dir) for slot in s.busy
                )

            wait_for("the slow request on the scoreboard", running)
            os.truncate(path, 0)  # its record and its slot's release now write past the end
            reply: Reply = slow.result(timeout=10)
        assert (reply.status, reply.pid) == (200, first.pid)
        after = [fetch(server.port, f"/r/after{n}") for n in range(3)]
        assert {(r.status, r.pid) for r in after} == {(200, first.pid)}  # the same worker
        new = wait_for("a new spool", lambda: spool_of(spool_dir, first.pid))
        assert os.stat(new).st_ino != inode  # a new file, not the truncated one grown back

        def recorded() -> list[str] | None:
            routes = routes_in(new)
            return routes if len(routes) == len(after) else None

        # The request that found the spool lost opens the new one and is recorded there.
        assert wait_for("the records after the loss", recorded) == [
            f"/r/after{n}" for n in range(3)
        ]
        assert counter(new, fmt.OFF_SPOOLS_LOST) == 1
        assert counter(new, fmt.OFF_WRITE_ERRORS) == 0


def _load(port: int, stop: threading.Event, replies: list[Reply], tag: str) -> None:
    n = 0
    deadline = time.monotonic() + 30
    while not stop.is_set() and time.monotonic() < deadline:
        replies.append(fetch(port, f"/r/{tag}{n}"))
        n += 1


@pytest.mark.parametrize("path", ["c", "python"])
def test_spool_directory_removed_under_load_is_recreated_and_the_drop_counted(
    spool_dir: str, path: str
) -> None:
    env = {"WSGIWATCH_PURE_PYTHON": "1"} if path == "python" else {}
    with gunicorn(
        "apps.probe:application",
        spool_dir,
        worker_class="gthread",
        workers=2,
        threads=2,
        env=env,
    ) as server:
        stop = threading.Event()
        replies: list[list[Reply]] = [[], []]
        loaders = [
            threading.Thread(target=_load, args=(server.port, stop, replies[i], f"c{i}-"))
            for i in range(2)
        ]
        for loader in loaders:
            loader.start()
        try:
            wait_for(
                "load on both workers", lambda: len({r.pid for r in replies[0] + replies[1]}) == 2
            )
            workers = {r.pid for r in replies[0] + replies[1]}
            old = {pid: spool_of(spool_dir, pid) for pid in workers}
            assert all(old.values())
            shutil.rmtree(spool_dir)

            def recreated() -> bool:
                return os.path.isdir(spool_dir) and all(spool_of(spool_dir, pid) for pid in workers)

            wait_for("every worker's new spool", recreated, timeout=20)
            # Load on, past the second after which each worker settles its lost spool.
            time.sleep(2 * spool_check.CHECK_INTERVAL_NS / 1e9)
        finally:
            stop.set()
            for loader in loaders:
                loader.join(30)
        served = [r for rs in replies for r in rs]
        assert {r.status for r in served} == {200}
        assert {r.pid for r in served} == workers  # no worker died
        assert os.stat(spool_dir).st_mode & 0o777 == 0o700

        seen: list[tuple[int, int, int]] = []

        def accounted() -> tuple[int, int] | None:
            records = dropped = 0
            for pid in workers:
                new = spool_of(spool_dir, pid)
                assert new is not None
                with SpoolReader(new, track=False) as reader:
                    # Published, whether or not the (small) ring has lapped them since.
                    records += reader.header().ring_head
                    assert reader.read_records().records  # and readable
                dropped += counter(new, fmt.OFF_RECORDS_LOST_WITH_SPOOL)
                assert counter(new, fmt.OFF_SPOOLS_LOST) == 1
            seen.append((records, dropped, len(served)))
            return (records, dropped) if records + dropped == len(served) else None

        # Every response served is a record in a new spool or a counted drop (records
        # appear at close(), a moment after the client has its response: poll).
        try:
            records, dropped = wait_for("every response accounted for", accounted)
        except AssertionError:
            raise AssertionError(f"(records, dropped, served): {seen[-1]}") from None
        assert dropped > 0 and records > 0


def test_a_removed_spool_is_noticed_within_a_second_and_logged(
    watch_dir: str, caplog: pytest.LogCaptureFixture, implementation: type
) -> None:
    assert WSGIWatch is implementation
    """In process: the file removed; the next request past the check time replaces it and
    says so once in the log."""
    caplog.set_level("WARNING", logger="wsgiwatch")
    watched = WSGIWatch(_hello, spool_dir=watch_dir, **SMALL)
    call_app(watched, environ_for("/one"))
    (old,) = list_spools(watch_dir)
    os.unlink(old)
    call_app(watched, environ_for("/two"))  # before the check is due: into the removed file
    writer = settings.ready[watch_dir]
    assert writer is not None
    writer.next_check_ns = 0  # the second is up (rather than sleeping it away)
    if writer.fast is not None:
        writer.fast.next_check_ns = 0
    call_app(watched, environ_for("/three"))  # finds the file gone at its end
    call_app(watched, environ_for("/four"))  # opens the new one
    (new,) = list_spools(watch_dir)
    assert routes_in(new) == ["/four"]
    assert counter(new, fmt.OFF_SPOOLS_LOST) == 1
    assert counter(new, fmt.OFF_RECORDS_LOST_WITH_SPOOL) == 0  # settled a second later
    spool_check.check_spool(None, time.monotonic_ns() + spool_check.CHECK_INTERVAL_NS)
    assert counter(new, fmt.OFF_RECORDS_LOST_WITH_SPOOL) == 3  # /one, /two, /three
    lost = [r for r in caplog.records if r.getMessage().startswith("worker.spool_lost")]
    assert len(lost) == 1


def _hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]
