"""Joining the time sources: since when could a finished request have been served?

Queue wait = entry - max(accept, arrival) (:func:`wsgiwatch.spool.reader.queue_wait_ns`),
with max(accept, arrival) taken from the best source a request has:

- the accept hook: exact accept time, and arrival from ``TCP_INFO`` at accept (on a
  kept-alive connection the accept was for an earlier request: arrival only);
- mod_wsgi's request start;
- the kernel: an arrival seen while the request waited, to within a jiffy or so (DESIGN.md
  gives the error measured; kept here between polls,
  since the request finishes later than the kernel saw it waiting);
- last a front proxy's ``X-Request-Start``: an upper bound, which includes the proxy and
  the kernel backlog.

Accept-hook accepts not yet followed by a request are kept too: without the kernel's view,
they are the only sign of a request stalled inside its worker.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from wsgiwatch.sidecar.connections import Waiting, plain_addr
from wsgiwatch.spool.reader import AcceptEvent, Record, SlotState

#: A kernel arrival estimate may be this much later than the entry it belongs to (jiffies).
ARRIVAL_TOLERANCE_NS = 8_000_000
#: Kernel arrival estimates not refreshed for this long are forgotten.
PENDING_TTL_NS = 120_000_000_000
#: Accept-hook accepts with no request after this long were connections that sent nothing.
ACCEPT_TTL_NS = 60_000_000_000

#: (pid, peer address as the worker records it, peer port)
PeerKey = tuple[int, str, int]


def peer_key(pid: int, addr: str, port: int) -> PeerKey:
    return (pid, plain_addr(addr), port)


def serving(slots: Iterable[SlotState]) -> set[tuple[str, int]]:
    """The peers a worker's scoreboard shows being served now."""
    return {(plain_addr(s.peer), s.peer_port) for s in slots}


class ArrivalJoin:
    """Arrival and accept times learned before the requests they belong to finish."""

    def __init__(self) -> None:
        self._kernel: dict[PeerKey, tuple[int, int]] = {}  # -> (arrival, last seen)
        self._accepted: dict[PeerKey, int] = {}  # -> max(accept, arrival)

    def started(self, pid: int, slots: Iterable[SlotState]) -> None:
        """Requests on the scoreboard: their accepts are no longer pending."""
        for slot in slots:
            self._accepted.pop(peer_key(pid, slot.peer, slot.peer_port), None)

    def accepted(
        self, pid: int, events: Iterable[AcceptEvent], busy: set[tuple[str, int]], now: int
    ) -> None:
        """Accept-hook events of ``pid``; ``busy``: peers it is serving now."""
        for event in events:
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

    def pending_accepts(self) -> Iterator[tuple[PeerKey, int]]:
        """Accepted connections whose request has not started: (key, ready time)."""
        return iter(list(self._accepted.items()))  # copied: the poll goes on mutating

    def ready(self, record: Record, wall_offset: int) -> tuple[int, str] | None:
        """(max(accept, arrival), the source that says so), or None if nothing does."""
        key = peer_key(record.pid, record.peer, record.peer_port)
        kernel = self._kernel.get(key)
        kernel_arrival = 0
        if kernel and kernel[0] <= record.entry_ns + ARRIVAL_TOLERANCE_NS:
            kernel_arrival = kernel[0]
            del self._kernel[key]  # a later one belongs to the connection's next request
        self._accepted.pop(key, None)
        if record.accept_source == "hook":
            # The hook's own times; the kernel may know an arrival the hook could not read.
            own = record.ready_ns
            ready = own if record.arrival_ns else max(own, kernel_arrival)
            if ready:
                by_kernel = ready == kernel_arrival and not record.arrival_ns
                return ready, "kernel" if by_kernel else "hook"
        if record.accept_source == "mod_wsgi" and record.accept_ns:
            # mod_wsgi's start is per request, so it holds on a kept-alive connection too.
            return max(record.accept_ns, kernel_arrival), "mod_wsgi"
        if kernel_arrival:
            return kernel_arrival, "kernel"
        if record.proxy_wall_ns:
            return record.proxy_wall_ns - wall_offset, "header"
        return None

    def forget(self, pid: int) -> None:
        """A worker is gone: nothing of its connections can still be joined."""
        for table in (self._kernel, self._accepted):
            for key in [k for k in table if k[0] == pid]:
                del table[key]
