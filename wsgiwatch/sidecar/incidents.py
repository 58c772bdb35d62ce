"""Head-of-line incidents: each one logged as one structured event (``hol.incident``) and
kept, newest last, for ``/api/incidents``."""

from __future__ import annotations

import collections
import time

import structlog

from wsgiwatch.sidecar.verdicts import Verdict
from wsgiwatch.sidecar.views import INCIDENTS_KEPT, Incident, peer_text
from wsgiwatch.spool.records import Record

log = structlog.get_logger("wsgiwatch.sidecar")


def _s(ns: int) -> float:
    """Seconds, to the microsecond: finer is noise in a log line."""
    return round(ns / 1e9, 6)


class IncidentLog:
    def __init__(self, kept: int = INCIDENTS_KEPT) -> None:
        self._kept: collections.deque[Incident] = collections.deque(maxlen=kept)

    def add(
        self, worker_index: int, record: Record, source: str, wait_ns: int, verdict: Verdict
    ) -> Incident:
        incident: Incident = {
            "victim": {
                "method": record.method,
                "route": record.route,
                "status": record.status,
                "peer": peer_text(record.peer, record.peer_port),
                "worker": worker_index,
                "pid": record.pid,
                "queue_wait_s": _s(wait_ns),
                "wait_source": source,
                "duration_s": _s(record.duration_ns),
            },
            "blockers": [
                {
                    "method": b.run.method,
                    "route": b.run.route,
                    "started_s_before_victim": _s(record.entry_ns - b.run.entry_ns),
                    "duration_s": _s(b.run.exit_ns - b.run.entry_ns) if b.run.exit_ns else None,
                    "running": not b.run.exit_ns,
                    "blamed_s": round(b.share_s, 6),
                }
                for b in verdict.blames
            ],
            "misrouted": verdict.misrouted,
            "wall_time": time.time() - (time.monotonic_ns() - record.entry_ns) / 1e9,
        }
        self._kept.append(incident)
        log.warning("hol.incident", **incident)
        return incident

    def latest(self, limit: int = 100) -> list[Incident]:
        """Newest first. Copied first: the poll thread may append meanwhile (the HTTP side
        never locks)."""
        return list(reversed(list(self._kept)))[: max(0, limit)]
