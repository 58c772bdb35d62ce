"""Connections seen in a listen backlog, matched with the requests they became only by their
connection's own peer port (records flagged FLAG_PEER_FROM_SOCKET); and the deadline the
sidecar writes into uWSGI workers' spools while it sees such connections. Crafted kernel
snapshots; tests/e2e/test_uwsgi.py runs the same on real uWSGI."""

from __future__ import annotations

import types
from pathlib import Path
from typing import Any

from support.sidecar_support import MS, S, make_spool, snapshot, tcp

from wsgiwatch.sidecar.arrivals import BACKLOG, ArrivalJoin
from wsgiwatch.sidecar.backlog_arrivals import (
    IDENTITY_WINDOW_NS,
    SIGHTING_MATCH_NS,
    SIGHTING_TTL_NS,
    BacklogSightings,
    IdentityRequests,
    InBacklog,
    in_backlog,
)
from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.reader import SpoolReader
from wsgiwatch.spool.records import Record

W1, W2, OTHER = 101, 102, 103
LISTEN_INODE = 500
LISTENER = tcp(state="LISTEN", port=8000, peer="0.0.0.0", peer_port=0, inode=LISTEN_INODE)
MID = 10 * S
ONE = frozenset({W1})


def record(
    port: int, *, pid: int = W1, entry_ns: int = MID + 300 * MS, flagged: bool = True, **kw: Any
) -> Record:
    fields: dict[str, Any] = dict(
        seq=0,
        pid=pid,
        request=1,
        accept_ns=0,
        arrival_ns=0,
        entry_ns=entry_ns,
        headers_ns=entry_ns + MS,
        exit_ns=entry_ns + 2 * MS,
        proxy_wall_ns=0,
        bytes_sent=2,
        tid=pid,
        slot=0,
        status=200,
        flags=fmt.FLAG_PEER_FROM_SOCKET if flagged else 0,
        peer_port=port,
        server_port=8000,
        method="GET",
        accept_source="none",
        peer="127.0.0.1",
        route="/",
    )
    fields.update(kw)
    return Record(**fields)


def seen(
    port: int, *, addr: str = "127.0.0.1", holders: frozenset[int] = frozenset({W1})
) -> InBacklog:
    return InBacklog(8000, addr, port, MID - 201 * MS, MID - 199 * MS, holders)


def test_backlog_connections_by_4_tuple_with_the_workers_that_may_take_them() -> None:
    socks = [
        tcp(peer="::ffff:10.0.0.7", peer_port=40001, inode=0, recv_ms=200),
        tcp(peer_port=40002, inode=11, recv_ms=100),  # accepted: a worker holds it
        tcp(port=9000, peer_port=40003, inode=0, recv_ms=100),  # another listener's
    ]
    inodes = {W1: {LISTEN_INODE, 11}, W2: {LISTEN_INODE}, OTHER: {7}}
    (item,) = in_backlog(snapshot([LISTENER, *socks], MID), [LISTENER], inodes)
    # bounded by the dump's start and end (snapshot() makes it 2 us long)
    bounds = (MID - 1000 - 200 * MS, MID + 1000 - 200 * MS)
    assert item == InBacklog(8000, "10.0.0.7", 40001, *bounds, frozenset({W1, W2}))
    assert item.arrival_ns == MID - 200 * MS


def test_a_flagged_record_takes_its_sighting_once() -> None:
    sightings = BacklogSightings()
    sightings.add([seen(40001), seen(40002)], MID)
    assert sightings.take(record(40001)) == seen(40001)
    assert sightings.take(record(40001)) is None  # a later request on that port: not it
    assert len(sightings) == 1


def test_a_remote_port_that_is_not_the_connections_own_is_never_joined() -> None:
    """Behind uWSGI's --http router or nginx's uwsgi_pass, REMOTE_PORT is the client's port
    to the proxy: unflagged, it may equal a backlog connection's port by chance."""
    sightings = BacklogSightings()
    sightings.add([seen(40001)], MID)
    assert sightings.take(record(40001, flagged=False)) is None
    assert sightings.take(record(0)) is None
    assert len(sightings) == 1


def test_only_a_worker_holding_the_listener_and_only_soon_after_the_sighting() -> None:
    sightings = BacklogSightings()
    sightings.add([seen(40001)], MID)
    assert sightings.take(record(40001, pid=OTHER)) is None
    late = MID + SIGHTING_MATCH_NS + 1  # another connection that reused the port
    assert sightings.take(record(40001, entry_ns=late)) is None
    early = MID - 300 * MS  # entered before its bytes came: not this connection
    assert sightings.take(record(40001, entry_ns=early)) is None
    assert sightings.take(record(40001)) is not None


def test_behind_a_proxy_the_port_decides_unless_two_peers_share_it() -> None:
    """A flagged record's REMOTE_ADDR may be the client's while the connection is the
    proxy's: one candidate on that port is taken; two are ambiguous, and neither is."""
    sightings = BacklogSightings()
    sightings.add([seen(40001, addr="10.0.0.2")], MID)
    assert sightings.take(record(40001, peer="192.0.2.9")) is not None
    sightings.add([seen(40002, addr="10.0.0.2"), seen(40002, addr="10.0.0.3")], MID)
    assert sightings.take(record(40002, peer="192.0.2.9")) is None
    assert sightings.take(record(40002, peer="10.0.0.3")) == seen(40002, addr="10.0.0.3")


def test_later_sightings_narrow_the_arrival_and_old_ones_are_forgotten() -> None:
    """Each dump bounds the arrival (its start and end, less the kernel's age of the bytes,
    a jiffy either way): the tightest bounds are kept, so a slow dump blurs nothing."""
    sightings = BacklogSightings()
    bounds = [(-210, -190), (-203, -150), (-260, -196)]  # ms from MID; the 2nd and 3rd slow
    for i, (earliest, latest) in enumerate(bounds):
        item = InBacklog(8000, "127.0.0.1", 40001, MID + earliest * MS, MID + latest * MS, ONE)
        sightings.add([item], MID + i * 100 * MS)
    taken = sightings.take(record(40001))
    assert taken is not None
    assert (taken.earliest_ns, taken.latest_ns) == (MID - 203 * MS, MID - 196 * MS)
    assert taken.arrival_ns == MID - 199 * MS - MS // 2
    sightings.add([seen(40009)], MID)
    sightings.add([], MID + SIGHTING_TTL_NS + 1)
    assert len(sightings) == 0


def test_the_join_gives_a_backlog_wait_never_inside_a_worker() -> None:
    join = ArrivalJoin()
    join.in_backlog([seen(40001)], MID)
    ready = join.ready(record(40001), wall_offset=0)
    assert ready is not None
    assert (ready.ns, ready.source, ready.inside) == (MID - 200 * MS, BACKLOG, False)
    assert join.ready(record(40001), wall_offset=0) is None


def _worker(directory: Path, pid: int, server: str) -> tuple[Any, Any]:
    writer = make_spool(str(directory), pid)
    reader = SpoolReader(writer.path)
    worker = types.SimpleNamespace(
        pid=pid, reader=reader, header=types.SimpleNamespace(server_software=server)
    )
    return worker, writer


def _until(writer: Any) -> int:
    value: int = fmt.U64.unpack_from(writer.mm, fmt.OFF_IDENTITY_UNTIL)[0]
    return value


def test_uwsgi_workers_holding_a_queued_listener_are_asked_until_it_lapses(
    tmp_path: Path,
) -> None:
    uwsgi, uwsgi_spool = _worker(tmp_path, W1, "uWSGI/2.0.31")
    idle, idle_spool = _worker(tmp_path, W2, "uWSGI/2.0.31")  # holds no queued listener
    gunicorn, gunicorn_spool = _worker(tmp_path, OTHER, "gunicorn/23.0.0")  # has REMOTE_PORT
    workers = [uwsgi, idle, gunicorn]
    asks = IdentityRequests()
    try:
        queued = [seen(40001, holders=frozenset({W1, OTHER}))]
        asks.update(workers, queued, MID)
        until = _until(uwsgi_spool)
        assert until == (MID + IDENTITY_WINDOW_NS) | 1
        assert uwsgi_spool.mm[fmt.OFF_IDENTITY_UNTIL] & 1  # the worker's one-byte check
        assert _until(idle_spool) == _until(gunicorn_spool) == 0
        asks.update(workers, [], MID + IDENTITY_WINDOW_NS // 2)  # backlog gone: kept a while
        assert _until(uwsgi_spool) == until
        asks.update(workers, [], MID + IDENTITY_WINDOW_NS + 1)  # lapsed: cleared
        assert _until(uwsgi_spool) == 0
    finally:
        for worker in workers:
            worker.reader.close()
        for spool in (uwsgi_spool, idle_spool, gunicorn_spool):
            spool.close()
