"""The opt-in accept hook, on real servers: gunicorn (gthread and sync, through
``-c python:wsgiwatch.gunicorn_config``) and waitress (``serve_waitress``).

Every server here has capacity 1, so a slow request makes the ones after it wait *inside*
the process: accepted, and not started. The hook must show that while it happens (accept
events with no scoreboard slot), and afterwards put the exact accept time in each record.
CLOCK_MONOTONIC is one clock for the client (this process) and the worker, so the client's
own timings are the truth the records are checked against.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from apps.client import Connection, Reply, fetch
from apps.spools import collect, wait_for_spool
from support.servers import Server, gunicorn, waitress

from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.reader import AcceptEvent, SlotState, SpoolReader, list_spools
from wsgiwatch.worker import process_spool
from wsgiwatch.worker.accept_hook import create_waitress_server

HOOK_CONFIG = ("-c", "python:wsgiwatch.gunicorn_config")
APP = "apps.probe:application"

# The hook reads CLOCK_MONOTONIC at accept and the middleware at entry: queue wait is exact
# to the ns on the worker's side. TCP_INFO's arrival (tcpi_last_data_recv) has jiffy
# resolution, 4 ms at HZ=250, but for a connection's first request it is never later than
# the accept, so it does not enter. What separates the record's queue wait from the client's
# (latency - service time) is connect-to-accept plus exit-to-last-byte-read: two loopback
# hops and two thread wake-ups on a loaded 2-CPU machine. 10 ms (2.5 jiffies) bounds those
# with room; measured here: -2.2 to +0.8 ms (record minus client).
QUEUE_WAIT_TOLERANCE_NS = 10_000_000
MS = 1_000_000
JIFFY_BOUND_NS = 10 * MS  # one jiffy at HZ=100, the coarsest kernel tick


def hooked(kind: str, spool_dir: str, app: str = APP) -> contextlib.AbstractContextManager[Server]:
    """A capacity-1 server with the accept hook."""
    if kind == "waitress":
        return waitress(app, spool_dir, threads=1, hook=True)
    return gunicorn(app, spool_dir, worker_class=kind, threads=1, extra=HOOK_CONFIG)


def unhooked(kind: str, spool_dir: str) -> contextlib.AbstractContextManager[Server]:
    """A capacity-1 server whose app turned the accept hook off (it is on by default)."""
    off = {"TEST_ACCEPT_HOOK": "0"}
    if kind == "waitress":
        return waitress(APP, spool_dir, threads=1, env=off)
    return gunicorn(APP, spool_dir, worker_class=kind, threads=1, env=off)


def wait_for(predicate: Any, timeout: float, what: str) -> Any:
    """Poll ``predicate()`` until it returns something true (bounded), and return it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.005)
    raise TimeoutError(f"{what}: not within {timeout} s")


def spool_of(server: Server) -> str:
    """The one worker's spool; with the hook it is opened at worker start."""
    return wait_for_spool(server.spool_dir)


@pytest.mark.parametrize("kind", ["gthread", "waitress"])
def test_requests_queued_behind_a_slow_one_are_seen_live_and_timed(
    kind: str, spool_dir: str
) -> None:
    with hooked(kind, spool_dir) as server, SpoolReader(spool_of(server), track=False) as reader:
        header = reader.header()
        assert header.accept_hook and header.declared_capacity == 1
        with ThreadPoolExecutor(4) as pool:
            slow = pool.submit(fetch, server.port, "/slow/1")
            board: list[SlotState] = wait_for(reader.scoreboard, 5, "the slow request running")
            (running,) = board
            fast = [pool.submit(fetch, server.port, "/fast") for _ in range(3)]
            # While the slow one runs: the fast ones are accepted, and not started.
            accepts: list[AcceptEvent] = []
            deadline = time.monotonic() + 0.7
            while time.monotonic() < deadline and len(accepts) < 4:  # the slow one's too
                accepts += [e for e in reader.read_accepts() if e.accept_ns >= running.accept_ns]
                time.sleep(0.005)
            board_then = reader.scoreboard()
            slow_still_running = not slow.done()
            replies: list[Reply] = [f.result() for f in fast]
            slow_reply = slow.result()
        records = {r.peer_port: r for r in collect(reader, 4)}

    assert slow_still_running
    fast_ports = {r.local_port for r in replies}
    assert running.peer_port == slow_reply.local_port
    assert running.accept_source == "hook" and running.accept_ns
    assert {e.peer_port for e in accepts} == fast_ports | {running.peer_port}
    assert [s.peer_port for s in board_then] == [running.peer_port]  # the fast ones: no slot
    for event in accepts:
        assert event.peer == "127.0.0.1" and event.server_port == server.port

    by_port = {e.peer_port: e for e in accepts}
    figures = []
    for reply in replies:
        record = records[reply.local_port]
        assert record.accept_source == "hook"
        assert not record.flags & fmt.FLAG_REUSED_CONNECTION
        assert record.accept_ns == by_port[reply.local_port].accept_ns
        assert reply.start_ns <= record.accept_ns <= record.entry_ns <= record.exit_ns
        wait = record.queue_wait_ns
        assert wait is not None
        truth = reply.latency_ns - record.duration_ns
        figures.append((wait - truth) / MS)
        assert abs(wait - truth) < QUEUE_WAIT_TOLERANCE_NS, (wait, truth)
        # It waited for the rest of the slow request (1 s, begun before it was sent).
        assert record.entry_ns >= records[running.peer_port].exit_ns
        assert wait > 300 * MS
    slow_record = records[running.peer_port]
    assert slow_record.queue_wait_ns is not None and slow_record.queue_wait_ns < 20 * MS
    print(f"{kind}: record queue wait - client truth, ms: {[f'{f:+.3f}' for f in figures]}")


@pytest.mark.parametrize("kind", ["gthread", "waitress"])
def test_second_request_on_a_kept_alive_connection_is_flagged_reused(
    kind: str, spool_dir: str
) -> None:
    with hooked(kind, spool_dir) as server, SpoolReader(spool_of(server), track=False) as reader:
        with Connection(server.port) as conn:
            first = conn.get("/r/first")
            second = conn.get("/r/second")
        records = {r.route: r for r in collect(reader, 2)}
        accepts = [e for e in reader.read_accepts() if e.peer_port == first.local_port]
    one, two = records["/r/first"], records["/r/second"]
    assert first.local_port == second.local_port == one.peer_port == two.peer_port
    assert len(accepts) == 1  # one connection, one accept
    assert one.accept_source == two.accept_source == "hook"
    assert not one.flags & fmt.FLAG_REUSED_CONNECTION
    assert two.flags & fmt.FLAG_REUSED_CONNECTION
    assert one.accept_ns == two.accept_ns == accepts[0].accept_ns
    # Its arrival is its own (from the socket gunicorn hands over, or waitress's task
    # queue), not the connection's first bytes: after the first request ended. TCP_INFO
    # counts in jiffies (4 ms at HZ=250; 10 ms at HZ=100), so from the socket it may read
    # up to one jiffy early.
    assert one.exit_ns - JIFFY_BOUND_NS <= two.arrival_ns <= two.entry_ns
    assert two.flags & (fmt.FLAG_ARRIVAL_TCP_INFO | fmt.FLAG_ARRIVAL_SERVER)


@pytest.mark.parametrize("kind", ["gthread", "waitress"])
def test_kept_alive_request_does_not_count_the_idle_connection_as_queue_wait(
    kind: str, spool_dir: str
) -> None:
    """Between two requests on one connection the client thinks for 500 ms; the server is
    idle all along. The second request waited for nothing: its queue wait is about zero,
    or unknown, never the time since the connection was accepted."""
    idle_ns = 500 * MS
    with hooked(kind, spool_dir) as server, SpoolReader(spool_of(server), track=False) as reader:
        with Connection(server.port) as conn:
            conn.get("/r/first")
            time.sleep(idle_ns / 1e9)
            second = conn.get("/r/second")
        records = {r.route: r for r in collect(reader, 2)}
    two = records["/r/second"]
    truth = second.latency_ns - two.duration_ns  # the client's view: about 1 ms
    wait = two.queue_wait_ns
    assert wait is None or wait < idle_ns // 2, (
        f"queue wait {wait / MS:.1f} ms for a request that waited {truth / MS:.1f} ms by the "
        "client's clock: it is entry - accept of the connection"
    )


@pytest.mark.parametrize("kind", ["gthread", "waitress"])
def test_queue_wait_does_not_count_a_client_slow_to_send(kind: str, spool_dir: str) -> None:
    """A client connects and sends its request 500 ms later (a browser's preconnect, a
    pre-warmed pool): the idle server served it at once. No bytes had come in at accept,
    so the hook knows no arrival; the queue wait must not then be entry - accept."""
    idle_ns = 500 * MS
    with hooked(kind, spool_dir) as server, SpoolReader(spool_of(server), track=False) as reader:
        with Connection(server.port) as conn:
            conn.connect()
            time.sleep(idle_ns / 1e9)
            reply = conn.get("/r/late")
        (record,) = collect(reader, 1)
    truth = reply.latency_ns - record.duration_ns  # from sending: about 1 ms
    wait = record.queue_wait_ns
    assert record.accept_source == "hook"
    # The arrival came after the accept, from the socket or the server's task queue.
    assert record.arrival_ns - record.accept_ns > idle_ns - 20 * MS
    assert wait is None or wait < idle_ns // 2, (
        f"queue wait {wait / MS:.1f} ms for a request that waited {truth / MS:.1f} ms by the "
        "client's clock: it is entry - accept, and the accept came before the request"
    )


def test_the_apps_spool_geometry_holds_with_the_hook(spool_dir: str) -> None:
    """``WSGIWatch(app, ring_size=16)``: the hook opens the worker's spool at worker start,
    before any request; the ring must still be the size the app asked for."""
    with hooked("gthread", spool_dir, app="apps.probe:small_ring") as server:
        fetch(server.port, "/fast")
        with SpoolReader(spool_of(server), track=False) as reader:
            header = reader.header()
    assert len(list_spools(spool_dir)) == 1
    assert header.ring_capacity == 16, f"ring of {header.ring_capacity} records, asked 16"


@pytest.mark.parametrize("kind", ["gthread", "waitress"])
def test_without_the_hook_no_accept_times_and_no_accept_events(kind: str, spool_dir: str) -> None:
    with unhooked(kind, spool_dir) as server:
        replies = [fetch(server.port, "/fast") for _ in range(3)]
        with SpoolReader(spool_of(server), track=False) as reader:
            records = collect(reader, 3)
            header = reader.header()
            accepts = reader.read_accepts()
    assert {r.status for r in replies} == {200}
    assert not header.accept_hook
    assert accepts == [] and header.accept_head == 0
    for record in records:
        assert record.accept_source == "none"
        assert record.accept_ns == record.arrival_ns == 0
        assert record.queue_wait_ns is None
        assert not record.flags & (fmt.FLAG_REUSED_CONNECTION | fmt.FLAG_ARRIVAL_TCP_INFO)


def abusive_clients(port: int) -> None:
    """Clients that connect and go away: closed at once, reset at once, half a request."""
    for _ in range(3):
        socket.create_connection(("127.0.0.1", port), 5).close()
    for _ in range(3):
        sock = socket.create_connection(("127.0.0.1", port), 5)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()  # RST
    with socket.create_connection(("127.0.0.1", port), 5) as sock:
        sock.sendall(b"GET /fast HTTP/1.1\r\nHo")


@pytest.mark.parametrize("kind", ["gthread", "waitress", "sync"])
def test_hook_never_breaks_the_server(kind: str, spool_dir: str) -> None:
    with hooked(kind, spool_dir) as server, SpoolReader(spool_of(server), track=False) as reader:
        abusive_clients(server.port)
        replies = [fetch(server.port, f"/r/after{n}") for n in range(3)]
        assert server.proc.poll() is None
        records = collect(reader, 3)
        header = reader.header()
        accepts = reader.read_accepts()
    assert {r.status for r in replies} == {200}
    assert [r.route for r in records] == ["/r/after0", "/r/after1", "/r/after2"]
    assert header.accept_hook and header.declared_capacity == 1
    assert header.write_errors == 0
    assert {r.local_port for r in replies} <= {e.peer_port for e in accepts}
    for reply in replies:
        (record,) = [r for r in records if r.peer_port == reply.local_port]
        assert record.accept_source == "hook"
        assert reply.start_ns <= record.accept_ns <= record.entry_ns
        assert record.queue_wait_ns is not None and record.queue_wait_ns < 20 * MS


@contextlib.contextmanager
def waitress_in_process(spool_dir: str, *, hook: bool) -> Iterator[Any]:
    """A waitress server object in this process, not run: the test drives its dispatcher."""
    import waitress.server

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b""]

    kwargs: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "threads": 1}
    server = (
        create_waitress_server(app, spool_dir=spool_dir, **kwargs)
        if hook
        else waitress.server.create_server(app, **kwargs)
    )
    try:
        yield server
    finally:
        server.task_dispatcher.shutdown()
        for channel in list(server._map.values()):
            channel.close()
        writer = process_spool._writers.pop(spool_dir, None)
        if writer is not None:
            writer.close()


@pytest.mark.parametrize("hook", [False, True])
def test_waitress_listener_survives_an_accept_that_finds_nothing(
    hook: bool, spool_dir: str
) -> None:
    """A readable listener whose accept() then finds nothing (EAGAIN): what happens when a
    sibling process sharing the listening socket took the connection first (waitress
    ``sockets=`` in prefork setups, socket activation). waitress's dispatcher ``accept()``
    returns None then, and its ``handle_accept`` simply returns; the event loop turns any
    exception of a handler into ``handle_error``, which closes the listener for good."""
    from waitress import wasyncore

    with waitress_in_process(spool_dir, hook=hook) as server:
        assert server.accepting
        wasyncore.read(server)  # what the loop does on a read event, with an empty backlog
        assert server.accepting and server.socket is not None and server.socket.fileno() >= 0
        assert server._fileno in server._map, "the listener left the event loop"
