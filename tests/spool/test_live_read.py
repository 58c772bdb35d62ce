"""Done when: a separate process reads a gunicorn gthread worker's records *while* it serves,
and their times agree with what the clients measured.

The reader is ``apps.spool_follower`` (a subprocess polling ``SpoolReader.read_records``,
tracking its cursor in the spool as the sidecar does). The clients are a few threads here,
each request carrying a unique token as its route (``/r/<token>``, set by the app as
``environ["wsgiwatch.route"]``), so each record is matched to the request it belongs to.
CLOCK_MONOTONIC is one clock for the clients, the worker and the reader.
"""

from __future__ import annotations

import statistics
import threading
import time

from apps.client import Connection, Reply, fetch
from apps.spool_follower import Follower
from apps.spools import wait_for_spool
from support.servers import gunicorn

from wsgiwatch.spool.reader import SpoolReader

CLIENTS = 3
PER_CLIENT = 100
PERIOD_S = 0.03  # each client sends every 30 ms: 300 requests in about 3 s
MS = 1_000_000
# A record's exit is when the server calls close() on the response. gunicorn does that
# after the last byte is sent and after its access-log call, so the client may have read
# everything a little before: measured up to 1.8 ms here (2 CPUs, clients and worker
# competing for them), in a third of the requests at most. A record may therefore outlast
# its client's latency by that much, and only rarely at all.
CLOSE_AFTER_SEND_NS = 5 * MS


def p95(values: list[int]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def client(port: int, index: int, t0: float, out: dict[str, Reply], errors: list[str]) -> None:
    try:
        with Connection(port) as conn:
            for n in range(PER_CLIENT):
                pause = t0 + n * PERIOD_S - time.monotonic()
                if pause > 0:
                    time.sleep(pause)
                path = f"/r/c{index}-{n}"
                # Every tenth one does some work, so durations differ.
                query = "?sleep=0.02" if n % 10 == 5 else ""
                reply = conn.get(path + query)
                if reply.status != 200:
                    errors.append(f"{path}: {reply.status}")
                out[path] = reply
    except Exception as exc:  # reported in the test's thread
        errors.append(repr(exc))


def test_separate_process_reads_records_live_and_they_match_client_timings(
    spool_dir: str,
) -> None:
    with gunicorn("apps.probe:application", spool_dir, worker_class="gthread", threads=4) as s:
        warm = fetch(s.port, "/r/warm")
        path = wait_for_spool(spool_dir)
        with Follower(path, poll_ms=5.0, track=True) as follower:
            replies: dict[str, Reply] = {}
            errors: list[str] = []
            t0 = time.monotonic() + 0.05
            threads = [
                threading.Thread(target=client, args=(s.port, i, t0, replies, errors))
                for i in range(CLIENTS)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join(30)
            load_end_ns = time.monotonic_ns()
            assert not errors, errors[:5]
            total = 1 + CLIENTS * PER_CLIENT
            with SpoolReader(path, track=False) as reader:
                deadline = time.monotonic() + 5
                while reader.header().ring_head < total and time.monotonic() < deadline:
                    time.sleep(0.005)
                assert reader.header().ring_head == total
                report = follower.finish(total)
                header = reader.header()

    # The reader saw every request exactly once, lost none, tore none.
    assert (report["lost"], report["torn"]) == (0, 0)
    assert report["cursor"] == total
    assert (header.reader_cursor, header.reader_lost) == (total, 0)  # it tracked its cursor
    records = {r["route"]: r for r in report["records"]}
    assert len(records) == len(report["records"]) == total
    assert set(records) == set(replies) | {"/r/warm"}
    assert records["/r/warm"]["pid"] == warm.pid

    # It read them during the load, not afterwards.
    lag = [r["read_ns"] - r["exit_ns"] for r in report["records"]]
    read_live = sum(r["read_ns"] <= load_end_ns for r in report["records"])
    assert read_live >= 0.9 * total
    assert report["polls_with_records"] >= 50
    assert p95(lag) < 100 * MS

    # Their times agree with the clients': each request ran inside its client's window,
    # for no longer than the client waited, and the client waited little more.
    overhead = []
    longer = 0
    for route, reply in replies.items():
        r = records[route]
        assert r["status"] == 200 and r["peer_port"] == reply.local_port
        assert r["pid"] == reply.pid
        assert reply.start_ns <= r["entry_ns"] <= r["headers_ns"] <= r["exit_ns"]
        duration = r["exit_ns"] - r["entry_ns"]
        assert duration <= reply.latency_ns + CLOSE_AFTER_SEND_NS, (route, duration, reply)
        longer += duration > reply.latency_ns
        if route.endswith("5"):
            assert duration >= 20 * MS
        overhead.append(reply.latency_ns - duration)
    assert longer <= 0.05 * len(replies)
    assert p95(overhead) < 20 * MS
    print(
        f"client latency - record duration: median {statistics.median(overhead) / MS:.3f} ms, "
        f"p95 {p95(overhead) / MS:.3f} ms, max {max(overhead) / MS:.3f} ms; "
        f"exit-to-read lag: median {statistics.median(lag) / MS:.1f} ms, "
        f"p95 {p95(lag) / MS:.1f} ms; {report['polls_with_records']} polls with records, "
        f"{read_live}/{total} read before the load ended; "
        f"{longer} records longer than their client's latency"
    )
