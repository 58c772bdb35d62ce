"""Accounting a poll's records in one batch (sums per route and worker, counters touched once
per poll, recent requests kept as tuples) gives what accounting them one by one gives:
every metric, every verdict, every view. And the recent-requests buffer stays within its
byte bound."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Iterator, Sequence

import pytest
from prometheus_client.samples import Sample
from support.sidecar_support import FakeProc, Req, finish, make_spool, scrape, start

from wsgiwatch.sidecar.accounting import Accountant
from wsgiwatch.sidecar.monitor import Monitor
from wsgiwatch.sidecar.recent import ENTRY_BYTES, RecentBuffer, request_view
from wsgiwatch.sidecar.workers import Worker
from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.records import Record, make_record
from wsgiwatch.spool.writer import SpoolWriter

MS = 1_000_000
PID_A, PID_B = 5_400_001, 5_400_002


def _traffic(writers: Sequence[SpoolWriter], t0: int) -> None:
    """Keep-alive requests on both workers, hook-timed ones, and on worker A a slow request
    with three requests stuck behind it (blocked, blamed on /slow); routes and statuses
    of several kinds."""
    a, b = writers
    start(a, 0, Req(entry_ns=t0 - 400 * MS, route="/running"))
    for n in range(40):
        at = t0 + n * 3 * MS
        for w, writer in enumerate(writers):
            finish(
                writer,
                Req(
                    entry_ns=at,
                    exit_ns=at + (n % 7 + 1) * MS // 3,
                    route=f"/r{n % 5}",
                    status=(200, 404, 500)[n % 3],
                    peer_port=41000 + n % 9 + 100 * w,
                    flags=fmt.FLAG_REUSED_CONNECTION if n >= 9 else 0,
                ),
            )
    slow = t0 + 200 * MS
    finish(a, Req(entry_ns=slow, exit_ns=slow + 300 * MS, route="/slow", peer_port=42000))
    for k in range(3):
        entry = slow + 300 * MS + k * MS
        finish(
            a,
            Req(
                entry_ns=entry,
                exit_ns=entry + MS // 2,
                route="/victim",
                peer_port=42001 + k,
                source=fmt.SOURCE_HOOK,
                accept_ns=slow + 10 * MS + k * MS,
                arrival_ns=slow + 11 * MS + k * MS,
            ),
        )
    finish(
        b,
        Req(
            entry_ns=t0 + 250 * MS,
            exit_ns=t0 + 251 * MS,
            route="/hooked",
            peer_port=43000,
            source=fmt.SOURCE_HOOK,
            accept_ns=t0 + 249 * MS,
            arrival_ns=t0 + 249 * MS + 500_000,
        ),
    )


@pytest.fixture
def monitors() -> Iterator[tuple[Monitor, Monitor]]:
    """Two monitors on two identical spool directories."""
    proc = FakeProc()
    made: list[tuple[Monitor, list[SpoolWriter], str]] = []
    t0 = time.monotonic_ns() - 5_000 * MS
    try:
        for _ in range(2):
            directory = tempfile.mkdtemp(prefix="wsgiwatch-batch-")
            writers = []
            for pid in (PID_A, PID_B):
                proc.add(pid, 1000)
                writers.append(make_spool(directory, pid, capacity=1, ring_capacity=256))
            _traffic(writers, t0)
            monitor = Monitor(directory, procfs_root=proc.root, use_kernel=False)
            made.append((monitor, writers, directory))
        yield made[0][0], made[1][0]
    finally:
        for monitor, writers, _ in made:
            monitor.close()
            for writer in writers:
                writer.close()
        proc.cleanup()


def _key(sample: Sample) -> tuple[str, list[tuple[str, str]]]:
    return sample.name, sorted(sample.labels.items())


def test_a_batch_accounts_as_one_record_at_a_time_does(
    monitors: tuple[Monitor, Monitor], monkeypatch: pytest.MonkeyPatch
) -> None:
    batch, single = monitors
    one_by_one = single.accountant.finished_all

    def each(items: Sequence[tuple[Worker, Record]], *rest: object) -> None:
        for item in items:
            one_by_one([item], *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(single.accountant, "finished_all", each)
    batch.poll()
    single.poll()
    got, want = scrape(batch), scrape(single)
    assert sorted(got) == sorted(want)
    for name, samples in want.items():
        if name.startswith("wsgiwatch_sidecar_poll"):
            continue  # the polls' own durations
        assert len(got[name]) == len(samples), name
        for g, w in zip(sorted(got[name], key=_key), sorted(samples, key=_key), strict=True):
            assert (g.name, g.labels) == (w.name, w.labels)
            assert g.value == pytest.approx(w.value, rel=1e-9, abs=1e-12), (name, g.labels)
    assert got["wsgiwatch_hol_blocked_requests_total"]  # the scenario did block
    views = batch.recent_requests(3600)["requests"]
    assert views == single.recent_requests(3600)["requests"]
    assert sum(v["blocked"] for v in views) == 3
    assert [i["victim"] for i in batch.incidents()] == [i["victim"] for i in single.incidents()]


def _record(n: int, route: str = "/r") -> Record:
    return make_record(*(n,) * 16, method="GET", accept_source="none", peer="10.0.0.1", route=route)


def test_the_recent_buffer_stays_within_its_bytes_oldest_out_first() -> None:
    buffer = RecentBuffer(max_count=10**6, max_bytes=100 * ENTRY_BYTES)
    for n in range(1000):
        buffer.add(0, _record(n + 1, "/" + "x" * (n % 200)))
        assert buffer.bytes <= buffer.max_bytes
    kept = [r.seq for r, _, _ in buffer]
    assert kept == list(range(1001 - len(kept), 1001))  # the newest, in order
    assert 30 < len(kept) < 100


def test_a_request_with_no_known_wait_is_viewed_as_none() -> None:
    record = _record(5)
    view = request_view(3, record, None)
    assert view["worker"] == 3 and view["route"] == "/r"
    assert (view["ready_ns"], view["wait_s"], view["wait_source"]) == (None, None, "none")
    assert (view["blocked"], view["misrouted"], view["blockers"], view["phases"]) == (
        False,
        False,
        [],
        {},
    )


def test_accountant_finished_takes_one_record(monitors: tuple[Monitor, Monitor]) -> None:
    """The one-record entry point feeds the same counters (what tests and tools call)."""
    monitor = monitors[0]
    monitor.registry.refresh()
    worker = next(iter(monitor.registry.workers.values()))
    accountant: Accountant = monitor.accountant
    accountant.finished(worker, _record(time.monotonic_ns()), [worker], time.monotonic_ns(), 0)
    assert len(accountant.recent) == 1
    assert scrape(monitor)["wsgiwatch_requests_total"][0].value == 1
