"""The finished requests kept for ``/api/requests`` and the timeline: bounded in bytes.

Each request is kept as the :class:`~wsgiwatch.spool.records.Record` the reader built, its
worker's index and what is known of its wait: nothing (no source said when it came), the
:class:`~wsgiwatch.sidecar.arrivals.Ready` of a request that waited too little for a
verdict, in the process alone (the usual one: everything else follows from it), or else a
small :class:`Outcome` (its wait, phases and verdict). The JSON view
(:class:`~wsgiwatch.sidecar.views.RequestView`) is built only when the API asks.

The buffer holds at most ``max_count`` requests and at most ``max_bytes`` by an estimate
per entry (the objects' fixed sizes, measured with ``sys.getsizeof`` at import, plus the
lengths of the strings that vary: route, peer, counted as if not shared): whichever bound
comes first. Routes are capped at 240 bytes by the spool format, so no entry is far off
its estimate.
"""

from __future__ import annotations

import collections
import sys
from collections.abc import Iterator

from wsgiwatch.sidecar.arrivals import Ready
from wsgiwatch.sidecar.views import RECENT_KEPT, BlockerRef, RequestView, peer_text
from wsgiwatch.spool.records import Record, make_record, queue_wait_ns

__all__ = ["RECENT_BYTES", "Outcome", "RecentBuffer", "entry_bytes", "request_view"]

#: Memory the recent requests may take (estimated): ~16 MiB, about 30,000 requests.
RECENT_BYTES = 16 << 20


_NO_PHASES: dict[str, float] = {}


class Outcome:
    """What the sidecar concluded about one finished request whose wait is known."""

    __slots__ = (
        "blocked",
        "blockers",
        "misrouted",
        "phases",
        "ready_ns",
        "wait_s",
        "wait_source",
    )

    def __init__(self, ready_ns: int, wait_s: float, wait_source: str) -> None:
        self.ready_ns = ready_ns
        self.wait_s = wait_s
        self.wait_source = wait_source
        self.blocked = False
        self.misrouted = False
        self.blockers: list[BlockerRef] = []
        self.phases: dict[str, float] = _NO_PHASES  # replaced, never mutated


def request_view(worker: int, r: Record, detail: Outcome | Ready | None) -> RequestView:
    """The JSON view of one kept request: ``detail`` is its Outcome, or the Ready of a
    request that waited too little for a verdict, in the process alone (its phases are
    that wait), or None when no source said when it came."""
    if isinstance(detail, Ready):
        wait_s = queue_wait_ns(r.entry_ns, detail.ns) / 1e9
        built = Outcome(detail.ns, wait_s, detail.source)
        built.phases = {"process": wait_s}
        outcome: Outcome | None = built
    else:
        outcome = detail
    return {
        "worker": worker,
        "pid": r.pid,
        "tid": r.tid,
        "request": r.request,
        "method": r.method,
        "route": r.route,
        "status": r.status,
        "peer": peer_text(r.peer, r.peer_port),
        "accept_ns": r.accept_ns or None,
        "arrival_ns": r.arrival_ns or None,
        "ready_ns": outcome.ready_ns if outcome is not None else None,
        "entry_ns": r.entry_ns,
        "exit_ns": r.exit_ns,
        "wait_s": outcome.wait_s if outcome is not None else None,
        "wait_source": outcome.wait_source if outcome is not None else "none",
        "blocked": outcome.blocked if outcome is not None else False,
        "misrouted": outcome.misrouted if outcome is not None else False,
        "blockers": [dict(b) for b in outcome.blockers] if outcome is not None else [],  # type: ignore[misc]
        "phases": dict(outcome.phases) if outcome is not None else {},
    }


def _fixed_bytes() -> int:
    """An entry's size without its Outcome and variable strings: the entry tuple, the
    Record, its int fields beyond the small cached ones, the deque's slot, and the
    strings' headers."""
    big = 2**40  # monotonic ns and the like: not among the small ints Python shares
    record = make_record(
        *(big,) * 16,
        method="GET",
        accept_source="none",
        peer="",
        route="",
    )
    ints = 16 * sys.getsizeof(big)
    strings = 2 * sys.getsizeof("")  # peer and route (method and source are shared)
    entry = sys.getsizeof((record, 0, None, 0))
    return entry + sys.getsizeof(record) + ints + strings + 8


ENTRY_BYTES = _fixed_bytes()
#: An Outcome, with its wait as a float and where it waited (a dict of one phase).
OUTCOME_BYTES = (
    sys.getsizeof(Outcome(2**40, 0.5, "hook"))
    + sys.getsizeof(2**40)
    + sys.getsizeof(0.5)
    + sys.getsizeof({"process": 0.0})
    + sys.getsizeof(0.5)
)
#: A Ready kept instead of an Outcome (its source and flag are shared objects).
READY_BYTES = sys.getsizeof(Ready(2**40, "hook", True)) + sys.getsizeof(2**40)
#: A blocker reference in a blocked request's outcome (a dict of four keys).
BLOCKER_BYTES = sys.getsizeof({"pid": 0, "request": 0, "route": "", "blamed_s": 0.0}) + 100

#: (record, worker index, what is known of its wait, estimated bytes)
Entry = tuple[Record, int, "Outcome | Ready | None", int]


def entry_bytes(record: Record, outcome: Outcome | None) -> int:
    size = ENTRY_BYTES + len(record.route) + len(record.peer)
    if outcome is not None:
        size += OUTCOME_BYTES + BLOCKER_BYTES * len(outcome.blockers)
    return size


class RecentBuffer:
    """Finished requests, oldest first, within ``max_count`` entries and ``max_bytes``
    (estimated)."""

    def __init__(self, max_count: int = RECENT_KEPT, max_bytes: int = RECENT_BYTES) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: collections.deque[Entry] = collections.deque()

    def add(self, worker: int, record: Record, outcome: Outcome | None = None) -> None:
        """Keep ``record`` (``outcome``: what is known of its wait, complete: it is sized
        now)."""
        size = entry_bytes(record, outcome)
        self._entries.append((record, worker, outcome, size))
        self.bytes += size
        if self.bytes > self.max_bytes or len(self._entries) > self.max_count:
            self._trim()

    def extend(self, entries: list[Entry]) -> None:
        """Keep many at once: ``(record, worker, outcome, entry_bytes(record, outcome))``."""
        self._entries.extend(entries)
        self.bytes += sum([e[3] for e in entries])
        self._trim()

    def _trim(self) -> None:
        entries = self._entries
        while entries and (len(entries) > self.max_count or self.bytes > self.max_bytes):
            self.bytes -= entries.popleft()[3]

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[tuple[Record, int, Outcome | Ready | None]]:
        # Copied first: the poll thread appends while the HTTP side reads (it never locks).
        return iter([(r, w, o) for r, w, o, _ in list(self._entries)])

    def views(self, since_ns: int) -> list[RequestView]:
        """The JSON views of the requests that finished at or after ``since_ns``."""
        return [request_view(w, r, o) for r, w, o in self if r.exit_ns >= since_ns]
