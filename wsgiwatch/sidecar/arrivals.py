"""Joining the time sources: since when could a finished request have been served?

Queue wait = entry - max(accept, arrival) (:func:`wsgiwatch.spool.records.queue_wait_ns`),
with max(accept, arrival) taken from the best source a request has:

- the accept hook: exact accept time, and arrival from ``TCP_INFO`` at accept (on a
  kept-alive connection the accept was for an earlier request: arrival only);
- mod_wsgi's request start;
- the kernel: an arrival seen while the request waited, to within a jiffy or so (DESIGN.md
  gives the error measured; kept here between polls, since the request finishes later than
  the kernel saw it waiting); on a unix socket, which has no kernel times, between the two
  dumps around its first sighting (:mod:`wsgiwatch.sidecar.unix_waits`), where a front
  proxy's time inside that window is the finer estimate;
- the kernel's accept backlog, for a record whose connection was seen there (by its own
  peer port: :mod:`wsgiwatch.sidecar.backlog_arrivals`): the wait was before any worker
  took it, healthy queueing (``inside`` False, source ``backlog``);
- last a front proxy's ``X-Request-Start`` alone: an upper bound, which includes the proxy
  and the kernel backlog (``inside`` is then False: nothing says the wait was in the
  worker).

Accept-hook accepts not yet followed by a request are kept too: without the kernel's view,
they are the only sign of a request stalled inside its worker.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import NamedTuple

from wsgiwatch.sidecar.backlog_arrivals import BacklogSightings, InBacklog
from wsgiwatch.sidecar.connections import Waiting, plain_addr
from wsgiwatch.sidecar.unix_waits import UnixWaits
from wsgiwatch.spool.layout import FLAG_REUSED_CONNECTION
from wsgiwatch.spool.records import AcceptEvent, Record, SlotState

#: A kernel arrival estimate may be this much later than the entry it belongs to (jiffies).
ARRIVAL_TOLERANCE_NS = 8_000_000
#: Kernel arrival estimates not refreshed for this long are forgotten.
PENDING_TTL_NS = 120_000_000_000
#: Accept-hook accepts with no request after this long were connections that sent nothing.
ACCEPT_TTL_NS = 60_000_000_000

#: nginx's ``${msec}`` is truncated to the millisecond, and a kernel estimate may read a
#: jiffy early: a proxy time up to this much *after* the worker's own is the same moment.
PROXY_ROUNDING_NS = 5_000_000
#: An accept event's peer for a unix-socket connection: ``unix:<socket inode>``.
UNIX_PEER_PREFIX = "unix:"

#: The source of a wait spent in a listen backlog, before any worker accepted.
BACKLOG = "backlog"

#: (pid, peer address as the worker records it, peer port)
PeerKey = tuple[int, str, int]


class Ready(NamedTuple):
    """Since when a finished request could have been served, and who says so."""

    ns: int
    source: str  # hook, mod_wsgi, kernel, backlog, header
    inside: bool  # the source knows the wait was inside the worker (not in a proxy/backlog)


def unix_record(record: Record) -> bool:
    """Served over a unix socket (gunicorn behind nginx): no peer address, no port."""
    return not record.peer and not record.peer_port


def peer_key(pid: int, addr: str, port: int) -> PeerKey:
    return (pid, plain_addr(addr), port)


def serving(slots: Iterable[SlotState]) -> set[tuple[str, int]]:
    """The peers a worker's scoreboard shows being served now."""
    return {(plain_addr(s.peer), s.peer_port) for s in slots}


class ArrivalJoin:
    """Arrival and accept times learned before the requests they belong to finish."""

    def __init__(self, unix: UnixWaits | None = None) -> None:
        self._kernel: dict[PeerKey, tuple[int, int]] = {}  # -> (arrival, last seen)
        self._accepted: dict[PeerKey, int] = {}  # -> max(accept, arrival)
        self.unix = unix if unix is not None else UnixWaits()
        self.backlog = BacklogSightings()

    def started(self, pid: int, slots: Iterable[SlotState]) -> None:
        """Requests on the scoreboard: their accepts are no longer pending."""
        for slot in slots:
            self._accepted.pop(peer_key(pid, slot.peer, slot.peer_port), None)

    def accepted(
        self, pid: int, events: Iterable[AcceptEvent], busy: set[tuple[str, int]], now: int
    ) -> None:
        """Accept-hook events of ``pid``; ``busy``: peers it is serving now."""
        for event in events:
            if event.peer.startswith(UNIX_PEER_PREFIX):  # a unix connection, by inode
                inode = event.peer[len(UNIX_PEER_PREFIX) :]
                if inode.isdigit():
                    self.unix.note_accept(int(inode), event.accept_ns)
                continue
            peer = (plain_addr(event.peer), event.peer_port)
            if event.peer_port and peer not in busy:
                # Ready since the accept, or since its bytes came if they came later.
                self._accepted[(pid, peer[0], peer[1])] = max(event.accept_ns, event.arrival_ns)
        for key, ready in list(self._accepted.items()):
            if now - ready > ACCEPT_TTL_NS:
                del self._accepted[key]

    def waiting(self, items: Iterable[Waiting], now: int) -> None:
        """Connections the kernel shows waiting inside a worker now."""
        for item in items:
            self._kernel[peer_key(item.pid, item.peer_addr, item.peer_port)] = (
                item.arrival_ns,
                now,
            )
        for key, (_, seen) in list(self._kernel.items()):
            if now - seen > PENDING_TTL_NS:
                del self._kernel[key]

    def in_backlog(self, items: Iterable[InBacklog], now: int) -> None:
        """Connections the kernel shows in listen backlogs now."""
        self.backlog.add(items, now)

    def pending_accepts(self) -> Iterator[tuple[PeerKey, int]]:
        """Accepted connections whose request has not started: (key, ready time)."""
        return iter(list(self._accepted.items()))  # copied: the poll goes on mutating

    def ready(self, record: Record, wall_offset: int, addr: str | None = None) -> Ready | None:
        """Since when ``record`` could have been served, or None if nothing says
        (``addr``: its peer's ``plain_addr()``, when the caller has it already)."""
        kernel_arrival = 0
        peer, port = record.peer, record.peer_port
        if self._kernel or self._accepted:  # both empty while no worker is at capacity
            key = (record.pid, plain_addr(peer) if addr is None else addr, port)  # peer_key()
            kernel = self._kernel.get(key) if self._kernel else None
            if kernel and kernel[0] <= record.entry_ns + ARRIVAL_TOLERANCE_NS:
                kernel_arrival = kernel[0]
                del self._kernel[key]  # a later one belongs to the connection's next request
            self._accepted.pop(key, None)
        # A unix connection seen waiting: taken whatever the source, so it is never given
        # to a later request of this worker.
        unix = self.unix.take(record.pid, record.entry_ns) if unix_record(record) else None
        in_backlog = self.backlog.take(record)
        proxy = record.proxy_wall_ns - wall_offset if record.proxy_wall_ns else 0
        if record.accept_source == "hook":
            # The hook's own times (record.ready_ns, inline); the kernel may know an arrival
            # the hook could not read.
            arrival = record.arrival_ns
            if arrival:
                if record.flags & FLAG_REUSED_CONNECTION or arrival >= record.accept_ns:
                    return Ready(arrival, "hook", True)
                return Ready(record.accept_ns, "hook", True)
            # No arrival: the accept, unless it was for an earlier request.
            own = 0 if record.flags & FLAG_REUSED_CONNECTION else record.accept_ns
            ready = max(own, kernel_arrival)
            if ready:
                return Ready(ready, "kernel" if ready == kernel_arrival else "hook", True)
        if record.accept_source == "mod_wsgi" and record.accept_ns:
            # mod_wsgi's start is per request, so it holds on a kept-alive connection too.
            return Ready(max(record.accept_ns, kernel_arrival), "mod_wsgi", True)
        if kernel_arrival:
            return Ready(kernel_arrival, "kernel", True)
        if in_backlog is not None:
            return Ready(in_backlog.arrival_ns, BACKLOG, False)
        if unix is not None:
            # The request reached the worker between two dumps; the proxy's time, when it
            # falls in that window, says when more finely.
            if unix.earliest_ns - PROXY_ROUNDING_NS <= proxy <= unix.first_seen_ns:
                return Ready(max(proxy, unix.earliest_ns), "header", True)
            return Ready(unix.arrival_ns, "kernel", True)
        if proxy:
            return Ready(proxy, "header", False)
        return None

    def forget(self, pid: int) -> None:
        """A worker is gone: nothing of its connections can still be joined."""
        for table in (self._kernel, self._accepted):
            for key in [k for k in table if k[0] == pid]:
                del table[key]
