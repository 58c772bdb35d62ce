"""What the sidecar's poll loop asks between polls, cheaply: is some worker at capacity
(poll now: a request may be queueing inside it), and when would a ring fill (poll before it
overflows). One look reads one block per live worker (:meth:`SpoolReader.glance`: the ring
head and every slot's request number) and builds nothing per worker; it runs twenty times
a second whatever the load.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable
from typing import NamedTuple

from wsgiwatch.errors import SpoolFormatError
from wsgiwatch.sidecar.workers import Worker

#: Poll again, early if need be, before a worker's ring is this full at its current rate.
#: A quarter: the poll thread may wake late (a busy host), the poll itself take a while,
#: and the rate jump, by three times the interval together before a record is lost.
DRAIN_AT = 0.25
#: drain_by() looks at the ring heads itself (when at_capacity has not just done so) at most
#: this often, and at most every this much per worker (its cost grows with the workers).
HEADS_EVERY_S = 0.05
HEADS_PER_WORKER_S = 0.002

#: How often the poll loop looks at the scoreboards between polls while some worker runs a
#: request, and polls while some worker is at capacity (:meth:`Looks.look`).
FAST_INTERVAL_S = 0.05
#: How often it looks while every worker was idle at the last look (see Looks.interval_s).
IDLE_LOOK_S = 0.1

#: at_capacity() and drain_by() answer from one look when asked within this of each other
#: (the poll loop asks both on each wake-up).
LOOK_REUSE_S = 0.01


class Look(NamedTuple):
    """What the last between-poll look saw (:meth:`Looks.look`)."""

    at: float  # time.monotonic() of the look
    idle: bool  # no live worker had a busy slot
    full: bool  # some live worker had every slot busy
    filling: bool  # some ring was DRAIN_AT full already


NO_LOOK = Look(-math.inf, False, False, False)


class Looks:
    """The between-poll looks of one monitor, and when to drain its rings."""

    def __init__(self, fast_interval_s: float = FAST_INTERVAL_S) -> None:
        self.fast_interval_s = fast_interval_s
        #: The workers a look reads, as the last poll left them, and what it saw last.
        self.watched: tuple[Worker, ...] = ()
        self.last = NO_LOOK
        # When to poll again, sooner than the schedule, so that no ring overflows: see
        # drain_by(). pid -> (when its header was last read, its ring head then).
        self._read_at: dict[int, tuple[int, int]] = {}
        self._drain_by: float | None = None

    def interval_s(self, *, stalled: bool) -> float:
        """How soon the poll loop should look again: every :data:`IDLE_LOOK_S` while every
        worker was idle at the last look (and nothing is stalled), every
        ``fast_interval_s`` once one runs a request.

        A worker is at capacity only after it has begun some request, so from all-idle a
        stall shows at most IDLE_LOOK_S plus a poll later (half that on average), well
        within issue 10's 250 ms; while requests run, as soon as before. Each look wakes the
        sidecar (about 50 us of CPU on this VM before any work): half as many while idle
        is a third of an idle sidecar's CPU."""
        if self.last.idle and not stalled:
            return IDLE_LOOK_S
        return self.fast_interval_s

    def look(self, now: float) -> Look:
        """What one pread per live worker shows: busy slots and ring heads. The poll loop
        asks twice per wake-up (``drain_by``, then ``at_capacity``): a look younger than
        :data:`LOOK_REUSE_S` is answered again. Only a count of the non-zero request numbers
        is made (minus those the last poll found stuck, which are not a request any more)."""
        look = self.last
        if now - look.at < LOOK_REUSE_S:
            return look
        full = filling = False
        idle = True
        for worker in self.watched:
            try:
                head, requests = worker.reader.glance()
            except SpoolFormatError:  # a damaged or vanished spool: the poll deals with it
                continue
            busy = len(requests) - requests.count(0)
            if busy:
                idle = False
            if worker.stuck:
                busy -= sum(1 for s in worker.stuck if s.request in requests)
            if busy >= max(1, worker.capacity):
                full = True
            if head - worker.reader.cursor >= DRAIN_AT * worker.header.ring_capacity:
                filling = True
        look = self.last = Look(now, idle, full, filling)
        return look

    def polled(self, live: Iterable[Worker]) -> None:
        """After a poll: the workers to watch. The poll has just read what a look would
        (and drained the rings): the loop's first question after it is answered from
        that, without a read."""
        watched = self.watched = tuple(live)
        self.last = Look(
            time.monotonic(),
            idle=not any(w.slots for w in watched),
            full=any(len(w.slots) >= max(1, w.capacity) for w in watched),
            filling=False,
        )

    def time_to_fill(self, worker: Worker, now: int) -> int | None:
        """Nanoseconds until ``worker``'s ring is DRAIN_AT full again, at the rate it wrote
        since the last poll (its ring head's progress; None: it wrote nothing)."""
        head = worker.header.ring_head
        last = self._read_at.get(worker.pid)
        self._read_at[worker.pid] = (now, head)
        if last is None or head <= last[1] or now <= last[0]:
            return None
        rate_ns = (now - last[0]) / (head - last[1])  # ns per record
        return int(DRAIN_AT * worker.header.ring_capacity * rate_ns)

    def drain_in(self, soonest_ns: int | None) -> None:
        """The soonest :meth:`time_to_fill` of a poll: drain_by() says so until the next."""
        self._drain_by = None if soonest_ns is None else time.monotonic() + soonest_ns / 1e9

    def forget(self, pid: int) -> None:
        self._read_at.pop(pid, None)

    def drain_by(self) -> float | None:
        """``time.monotonic()`` by which the next poll should run so that no worker's ring
        overflows (None: whenever the schedule says).

        Rings are fixed when a worker starts (4,096 records by default); a sidecar that
        polls every 0.5 s would lose records from a worker writing over 8,000 a second. So:
        at the rate each worker wrote since the last poll, the time its ring is DRAIN_AT
        full; and, for a burst out of quiet, now if a ring is that full already (the look,
        shared with at_capacity: the poll loop asks both on each wake-up). The poll loop
        polls early then (an optional method: monitors without it poll on the schedule
        only)."""
        now = time.monotonic()
        due = self._drain_by
        if due is not None and due <= now:
            return due
        # A look costs a pread per worker: with many workers, look less often for this
        # (64 workers: every 128 ms); at_capacity() looks every time it is asked.
        every = max(HEADS_EVERY_S, HEADS_PER_WORKER_S * len(self.watched))
        if now - self.last.at >= every:
            self.look(now)
        if self.last.filling:
            return now
        return due
