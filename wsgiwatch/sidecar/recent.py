"""The finished requests kept for ``/api/requests`` and the timeline: bounded in bytes.

Each request is kept as the :class:`~wsgiwatch.spool.records.Record` the reader built and a
small :class:`Outcome` (its wait and verdict); the JSON view
(:class:`~wsgiwatch.sidecar.views.RequestView`) is built only when the API asks. Building a
dict of 18 keys per request cost about as much as the rest of the accounting, and kept
each request in about 1.5 KB instead of about 0.5.

The buffer holds at most ``max_count`` requests and at most ``max_bytes`` by an estimate
per entry (the objects' fixed sizes, measured with ``sys.getsizeof`` at import, plus the
lengths of the strings that vary: route, peer): whichever bound comes first. Routes are
capped at 240 bytes by the spool format, so no entry is far off its estimate.
"""

from __future__ import annotations

import collections
import sys
from collections.abc import Iterator

from wsgiwatch.sidecar.views import RECENT_KEPT, BlockerRef, RequestView, peer_text
from wsgiwatch.spool.records import Record, make_record

__all__ = ["RECENT_BYTES", "Outcome", "RecentBuffer"]

#: Memory the recent requests may take (estimated): ~16 MiB, about 30,000 requests.
RECENT_BYTES = 16 << 20


_NO_PHASES: dict[str, float] = {}


class Outcome:
    """What the sidecar concluded about one finished request (filled in as it learns)."""

    __slots__ = (
        "blocked",
        "blockers",
        "misrouted",
        "phases",
        "ready_ns",
        "record",
        "wait_s",
        "wait_source",
        "worker",
    )

    def __init__(self, worker: int, record: Record) -> None:
        self.worker = worker
        self.record = record
        self.ready_ns: int | None = None
        self.wait_s: float | None = None
        self.wait_source = "none"
        self.blocked = False
        self.misrouted = False
        self.blockers: list[BlockerRef] = []
        self.phases: dict[str, float] = _NO_PHASES  # replaced, never mutated

    def view(self) -> RequestView:
        r = self.record
        return {
            "worker": self.worker,
            "pid": r.pid,
            "tid": r.tid,
            "request": r.request,
            "method": r.method,
            "route": r.route,
            "status": r.status,
            "peer": peer_text(r.peer, r.peer_port),
            "accept_ns": r.accept_ns or None,
            "arrival_ns": r.arrival_ns or None,
            "ready_ns": self.ready_ns,
            "entry_ns": r.entry_ns,
            "exit_ns": r.exit_ns,
            "wait_s": self.wait_s,
            "wait_source": self.wait_source,
            "blocked": self.blocked,
            "misrouted": self.misrouted,
            "blockers": [dict(b) for b in self.blockers],  # type: ignore[misc]
            "phases": dict(self.phases),
        }


def _fixed_bytes() -> int:
    """An entry's size without its variable strings: the Outcome, the Record, its int
    fields beyond the small cached ones, the deque's slot, and the strings' headers."""
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
    phases = sys.getsizeof({"process": 0.0}) + sys.getsizeof(0.5)  # where it waited
    outcome = sys.getsizeof(Outcome(0, record))
    return outcome + sys.getsizeof(record) + ints + strings + phases + 8


ENTRY_BYTES = _fixed_bytes()
#: A blocker reference in a blocked request's outcome (a dict of four keys).
BLOCKER_BYTES = sys.getsizeof({"pid": 0, "request": 0, "route": "", "blamed_s": 0.0}) + 100


class RecentBuffer:
    """Outcomes, oldest first, within ``max_count`` entries and ``max_bytes`` (estimated)."""

    def __init__(self, max_count: int = RECENT_KEPT, max_bytes: int = RECENT_BYTES) -> None:
        self.max_count = max_count
        self.max_bytes = max_bytes
        self.bytes = 0
        self._entries: collections.deque[tuple[Outcome, int]] = collections.deque()

    def add(self, worker: int, record: Record) -> Outcome:
        outcome = Outcome(worker, record)
        size = ENTRY_BYTES + len(record.route) + len(record.peer)
        self._entries.append((outcome, size))
        self.bytes += size
        self._trim()
        return outcome

    def judged(self, outcome: Outcome) -> None:
        """``outcome`` now holds its blockers (counted when it leaves as when it came)."""
        self.bytes += BLOCKER_BYTES * len(outcome.blockers)
        self._trim()

    def _trim(self) -> None:
        entries = self._entries
        while entries and (len(entries) > self.max_count or self.bytes > self.max_bytes):
            outcome, size = entries.popleft()
            self.bytes -= size + (BLOCKER_BYTES * len(outcome.blockers))

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Outcome]:
        # Copied first: the poll thread appends while the HTTP side reads (it never locks).
        return iter([outcome for outcome, _ in list(self._entries)])

    def views(self, since_ns: int) -> list[RequestView]:
        """The JSON views of the requests that finished at or after ``since_ns``."""
        return [o.view() for o in self if o.record.exit_ns >= since_ns]
