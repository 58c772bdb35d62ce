"""Greenlets: gunicorn's gevent worker runs many requests at once in one thread.

gevent is only ever imported by the server (a subprocess): this process is never
monkey-patched. The app's ``/gsleep/<s>`` route yields with ``gevent.sleep``.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from apps.client import fetch
from apps.spools import wait_for_spool
from support.servers import gunicorn

from wsgiwatch.spool.reader import SlotState, SpoolReader

CONCURRENT = 10
SLEEP_S = 1.0


def test_concurrent_greenlets_get_distinct_slots_and_request_numbers(spool_dir: str) -> None:
    with gunicorn("apps.probe:application", spool_dir, worker_class="gevent") as server:
        fetch(server.port, "/fast")  # opens the worker's spool
        with SpoolReader(wait_for_spool(spool_dir), track=False) as reader:
            reader.read_records()
            with ThreadPoolExecutor(CONCURRENT) as pool:
                started = time.monotonic()
                futures = [
                    pool.submit(fetch, server.port, f"/gsleep/{SLEEP_S}") for _ in range(CONCURRENT)
                ]
                busy: list[SlotState] = []
                while time.monotonic() - started < SLEEP_S * 0.8:  # all in flight, surely
                    busy = reader.scoreboard()
                    if len(busy) == CONCURRENT:
                        break
                    time.sleep(0.01)
                in_flight_at = time.monotonic() - started
                replies = [f.result() for f in futures]
            records = []
            deadline = time.monotonic() + 5
            while len(records) < CONCURRENT and time.monotonic() < deadline:
                # (The warm-up's record may come first: it is written at close(), a moment
                # after its client had the response.)
                found = reader.read_records().records
                records.extend(r for r in found if r.route == "/gsleep/:id")
                time.sleep(0.01)
            header = reader.header()

    assert len(busy) == CONCURRENT, f"{len(busy)} busy slots after {in_flight_at:.3f} s"
    assert len({s.index for s in busy}) == CONCURRENT
    assert len({s.request for s in busy}) == CONCURRENT
    assert {s.path for s in busy} == {"/gsleep/:id"}
    assert {s.peer_port for s in busy} == {r.local_port for r in replies}
    assert header.slot_high_water >= CONCURRENT
    assert header.server_software.startswith("gunicorn")
    assert {r.status for r in replies} == {200}
    assert len({r.pid for r in replies}) == 1  # one worker process served them all

    assert len(records) == CONCURRENT
    assert {r.request for r in records} == {s.request for s in busy}
    assert {r.peer_port for r in records} == {r.local_port for r in replies}
    assert {r.route for r in records} == {"/gsleep/:id"}
    assert all(r.duration_ns >= SLEEP_S * 1e9 for r in records)
    # They ran at the same time: every one entered before any one left.
    assert max(r.entry_ns for r in records) < min(r.exit_ns for r in records)
    assert len({r.slot for r in records}) == CONCURRENT


@pytest.mark.parametrize("config", [(), ("-c", "python:wsgiwatch.gunicorn_config")])
def test_gevent_worker_accepts_are_hooked_on_the_loop(
    config: tuple[str, ...], spool_dir: str
) -> None:
    """gevent accepts on its loop (``StreamServer.do_read``), and each connection's greenlet
    runs later: the hook records the accept there, by default and with the opt-in config."""
    with gunicorn("apps.probe:application", spool_dir, worker_class="gevent", extra=config) as s:
        reply = fetch(s.port, "/fast")
        with SpoolReader(wait_for_spool(spool_dir), track=False) as reader:
            records = []
            deadline = time.monotonic() + 5
            while not records and time.monotonic() < deadline:
                records = reader.read_records().records
                time.sleep(0.01)
            header = reader.header()
            accepts = [e for e in reader.read_accepts() if e.peer_port == reply.local_port]
    assert reply.status == 200
    assert header.accept_hook
    assert [r.accept_source for r in records] == ["hook"]
    assert len(accepts) == 1 and accepts[0].accept_ns == records[0].accept_ns
    assert reply.start_ns <= records[0].accept_ns <= records[0].entry_ns
