"""Requests that die with their worker (SIGKILL, the OOM killer, gunicorn's WORKER TIMEOUT).

A dead worker's scoreboard still says what it was running: every busy slot whose request
never reached the ring died with the process. The connections it had accepted and not yet
started (seen waiting inside it by the kernel, or by the accept hook) died too. Both are
counted, with the worker's fate, and the death is logged as one event (``worker.lost``)
naming the requests.

The fate comes from the worker itself when it could say (a note written by its gunicorn
hooks, :mod:`wsgiwatch.spool.fate`): ``timed_out`` (gunicorn aborted it after its
``--timeout``; the note lists the requests in flight then, which gunicorn's abort may have
ended with an exception and so recorded), ``exited`` (it ran its exit hooks). Without a
note it is ``killed``: it ended without a word (SIGKILL, the OOM killer, a crash).
"""

from __future__ import annotations

from collections.abc import Iterable

import structlog

from wsgiwatch.sidecar import accumulate as acc
from wsgiwatch.sidecar.arrivals import PeerKey
from wsgiwatch.sidecar.workers import Worker
from wsgiwatch.spool.fate import FATES, KILLED, read_note
from wsgiwatch.spool.records import SlotState

log = structlog.get_logger("wsgiwatch.sidecar")


class LostRequests:
    def __init__(self, route: acc.LabelCap) -> None:
        self._route = route
        self.requests = acc.Counter()  # (route, fate)
        self.connections = acc.Counter()  # (fate,)
        self.deaths = acc.Counter()  # (fate,)
        for fate in FATES:
            # Born at 0, so that rate() and increase() see the first death.
            self.connections.inc((fate,), 0.0)
            self.deaths.inc((fate,), 0.0)

    def worker_gone(
        self, worker: Worker, final_slots: Iterable[SlotState], unstarted: int, now_ns: int
    ) -> None:
        """Account for a worker whose process is gone, after its last records were read
        (they are in its history)."""
        note = read_note(worker.reader.path)
        fate = note.fate if note is not None else KILLED
        self.deaths.inc((fate,))
        finished = {run.request: run for run in worker.history}
        lost = [
            (s.method, s.path, max(0, now_ns - s.entry_ns) / 1e9)
            for s in final_slots
            if s.request not in finished
        ]
        if note is not None:
            # gunicorn's abort raises SystemExit inside the request, and the middleware then
            # records it (as raised) before the process ends. It still died with its worker.
            for number in sorted(note.requests):
                run = finished.get(number)
                if run is not None and run.raised:
                    lost.append((run.method, run.route, (run.end(now_ns) - run.entry_ns) / 1e9))
        for _, route, _ in lost:
            self.requests.inc((self._route(route), fate))
        if unstarted:
            self.connections.inc((fate,), float(unstarted))
        if lost or unstarted:
            log.warning(
                "worker.lost",
                worker=worker.index,
                pid=worker.pid,
                fate=fate,
                requests=[
                    {"method": method, "route": route, "running_s": round(running, 6)}
                    for method, route, running in lost
                ],
                unstarted_connections=unstarted,
            )


class Unstarted:
    """Per worker, the connections it has accepted and not started, as the last two polls
    saw them (kernel view and accept hook), less those answered meanwhile.

    Two polls, because a dying process closes its sockets before it shows as dead: the
    poll in between sees it alive holding nothing.
    """

    def __init__(self) -> None:
        self._waiting: dict[int, tuple[set[PeerKey], set[PeerKey]]] = {}  # (now, before)
        self._answered: dict[int, tuple[set[PeerKey], set[PeerKey]]] = {}

    def seen(self, pid: int, waiting: set[PeerKey], answered: set[PeerKey]) -> None:
        self._waiting[pid] = (waiting, self._waiting.get(pid, (set(), set()))[0])
        self._answered[pid] = (answered, self._answered.get(pid, (set(), set()))[0])

    def at_death(self, pid: int, running: set[PeerKey]) -> int:
        """How many died with ``pid`` (``running``: the peers its last scoreboard shows,
        counted as lost requests already). Forgets the pid."""
        now, before = self._waiting.pop(pid, (set(), set()))
        answered_now, answered_before = self._answered.pop(pid, (set(), set()))
        return len((now | before) - running - answered_now - answered_before)
