"""Connections seen waiting in a listener's accept backlog, matched with the requests they
became: the backlog phase of a wait, for servers whose busy workers do not accept (uWSGI).

A connection in the backlog is held by no process (inode 0); the kernel knows its 4-tuple
and when its bytes came (``tcpi_last_data_recv``). Once a worker accepts it and the request
finishes, its record can be matched with that sighting only by the connection's own peer
port. uWSGI passes none (``--http-socket``) or the client's port to a proxy in front
(``--http`` router, nginx ``uwsgi_pass``), so the sidecar asks the worker for it
(:mod:`wsgiwatch.worker.uwsgi_identity`): while it sees connections in the backlog of a
listener a uWSGI worker holds, it writes a deadline into that worker's spool header; the
worker then reads ``getpeername`` of each connection and flags the record
(``FLAG_PEER_FROM_SOCKET``). Only such flagged records are matched, so a ``REMOTE_PORT``
that names another connection (the client's, to a proxy) is never joined with ours.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from wsgiwatch.kernel import KernelSnapshot, TcpSocket
from wsgiwatch.sidecar.connections import ESTABLISHED, plain_addr
from wsgiwatch.sidecar.workers import Worker
from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.records import Record

#: How long after the last sighting workers keep reading their connections' ports: a
#: connection seen in one dump may be accepted any time before the next (polls are 0.5 s
#: apart by default), and its identity must be read then.
IDENTITY_WINDOW_NS = 2_000_000_000
#: A sighting matches a request that entered at most this long after it was last seen
#: (else it is another connection that reused the port); older sightings are forgotten.
SIGHTING_MATCH_NS = IDENTITY_WINDOW_NS
SIGHTING_TTL_NS = 120_000_000_000
#: A kernel arrival estimate may read this much late (half a dump plus a jiffy or so).
ARRIVAL_TOLERANCE_NS = 8_000_000
#: Servers whose workers are asked for their connections' ports (by SERVER_SOFTWARE).
ASKED_SERVERS = ("uWSGI/",)


@dataclass(frozen=True, slots=True)
class InBacklog:
    """A connection the kernel completed that no worker has accepted yet."""

    listener_port: int
    peer_addr: str  # as the worker records it (no ``::ffff:`` prefix)
    peer_port: int
    # When its bytes came (CLOCK_MONOTONIC), as bounded by one dump: the kernel's age of
    # them (``tcpi_last_data_recv``) taken from when the dump began and when it ended.
    earliest_ns: int
    latest_ns: int
    holders: frozenset[int]  # pids holding the listener: one of them will accept it

    @property
    def arrival_ns(self) -> int:
        return (self.earliest_ns + self.latest_ns) // 2


def in_backlog(
    snapshot: KernelSnapshot,
    listeners: Sequence[TcpSocket],
    inodes_by_pid: Mapping[int, set[int]],
) -> list[InBacklog]:
    """The connections waiting in the accept backlog of ``listeners``."""
    holders: dict[int, frozenset[int]] = {}
    for listener in listeners:
        pids = frozenset(pid for pid, inodes in inodes_by_pid.items() if listener.inode in inodes)
        holders[listener.local_port] = holders.get(listener.local_port, frozenset()) | pids
    found: list[InBacklog] = []
    for sock in snapshot.tcp:
        if sock.inode != 0 or sock.state != ESTABLISHED or sock.local_port not in holders:
            continue
        age = (sock.last_data_recv_ms or 0) * 1_000_000  # unknown: waiting since the dump
        found.append(
            InBacklog(
                sock.local_port,
                plain_addr(sock.peer_addr),
                sock.peer_port,
                snapshot.started_ns - age,
                snapshot.finished_ns - age,
                holders[sock.local_port],
            )
        )
    return found


def asked(worker: Worker) -> bool:
    """Whether this worker's records need their connection's port read from its socket."""
    return worker.header.server_software.startswith(ASKED_SERVERS)


class IdentityRequests:
    """The deadlines written into workers' spool headers: refreshed while their listeners
    have a backlog, cleared once they lapse (one pwrite each way, per poll)."""

    def __init__(self) -> None:
        self._until: dict[int, int] = {}  # pid -> deadline written (monotonic ns)

    def update(self, live: Iterable[Worker], seen: Iterable[InBacklog], now: int) -> None:
        wanted = set().union(*(s.holders for s in seen))
        live = list(live)
        pids = {w.pid for w in live}
        self._until = {p: u for p, u in self._until.items() if p in pids}  # gone: forgotten
        for worker in live:
            pid = worker.pid
            until = self._until.get(pid, 0)
            if pid in wanted and asked(worker):
                until = now + IDENTITY_WINDOW_NS
            elif not until or now < until:
                continue
            else:
                until = 0
            try:
                worker.reader.ask_identity(until)
            except OSError:  # the spool went away under us: its worker is leaving
                continue
            if until:
                self._until[pid] = until
            else:
                self._until.pop(pid, None)


class BacklogSightings:
    """Connections seen in backlogs, kept until the request each became finishes."""

    def __init__(self) -> None:
        # peer port -> peer address -> (sighting, its bounds narrowed by later ones; last seen)
        self._seen: dict[int, dict[str, tuple[InBacklog, int]]] = {}

    def __len__(self) -> int:
        return sum(len(by_addr) for by_addr in self._seen.values())

    def add(self, seen: Iterable[InBacklog], now: int) -> None:
        for item in seen:
            by_addr = self._seen.setdefault(item.peer_port, {})
            known = by_addr.get(item.peer_addr)
            if known is not None and known[0].listener_port == item.listener_port:
                # The same connection in a later dump. Each dump bounds the moment its bytes
                # came, give or take a jiffy at a phase of its own: the tightest bounds are
                # kept, so a slow dump (a wide bound) does not blur a quick one's.
                first = known[0]
                item = dataclasses.replace(
                    first,
                    earliest_ns=max(first.earliest_ns, item.earliest_ns),
                    latest_ns=min(first.latest_ns, item.latest_ns),
                )
            by_addr[item.peer_addr] = (item, now)
        for port, by_addr in list(self._seen.items()):
            for addr, (_, last) in list(by_addr.items()):
                if now - last > SIGHTING_TTL_NS:
                    del by_addr[addr]
            if not by_addr:
                del self._seen[port]

    def take(self, record: Record) -> InBacklog | None:
        """The sighting of ``record``'s connection, removed; None when there is none, or
        when the record's port is not its connection's own (no FLAG_PEER_FROM_SOCKET)."""
        if not record.flags & fmt.FLAG_PEER_FROM_SOCKET or not record.peer_port:
            return None
        by_addr = self._seen.get(record.peer_port)
        if not by_addr:
            return None
        addr = plain_addr(record.peer)
        if addr in by_addr:
            found = by_addr[addr]
        elif len(by_addr) == 1:  # behind a proxy REMOTE_ADDR is the client, not the proxy
            found = next(iter(by_addr.values()))
        else:  # two connections from that port: which one is unknown
            return None
        sighting, last = found
        earliest = sighting.arrival_ns - ARRIVAL_TOLERANCE_NS
        if record.pid not in sighting.holders or not (
            earliest <= record.entry_ns <= last + SIGHTING_MATCH_NS
        ):
            return None
        del by_addr[sighting.peer_addr]
        if not by_addr:
            del self._seen[record.peer_port]
        return sighting
