"""``/api/state``: the live view built from the workers the registry follows and the stalls
of the last poll (:class:`wsgiwatch.sidecar.views.LiveState`)."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from wsgiwatch.sidecar.stalls import Stall
from wsgiwatch.sidecar.views import (
    LiveState,
    SlotView,
    StallView,
    UnseenWorker,
    WorkerView,
    peer_text,
)
from wsgiwatch.sidecar.workers import Worker
from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.records import SlotState


def live_state(
    workers: Iterable[Worker],
    stalls: Iterable[Stall],
    backlog: Mapping[str, tuple[int, int]],
    *,
    kernel: bool,
    unseen: list[UnseenWorker],
    threshold_s: float,
) -> LiveState:
    now = time.monotonic_ns()
    stall_views: list[StallView] = [
        {
            "worker": w.index,
            "peer": peer_text(s.peer_addr, s.peer_port)
            if s.peer_addr != "unix"
            else f"unix inode {s.peer_port}",
            "age_s": max(0, now - s.arrival_ns) / 1e9,
            "unread": s.unread,
        }
        for w, s in stalls
    ]
    return {
        "now_ns": now,
        "wall_offset_ns": time.time_ns() - now,
        "workers": [worker_view(w, now) for w in sorted(workers, key=lambda w: w.index)],
        "stalls": stall_views,
        "listeners": [
            {"listener": name, "backlog": q, "limit": cap}
            for name, (q, cap) in sorted(backlog.items())
        ],
        "kernel": kernel,
        "kernel_unseen_workers": unseen,
        "threshold_s": threshold_s,
    }


def worker_view(w: Worker, now: int) -> WorkerView:
    def slot_view(s: SlotState) -> SlotView:
        return {
            "request": s.request,
            "method": s.method,
            "path": s.path,
            "peer": peer_text(s.peer, s.peer_port),
            "tid": s.tid,
            "running_s": max(0, now - s.entry_ns) / 1e9,
        }

    return {
        "worker": w.index,
        "pid": w.pid,
        "ppid": w.ppid,
        "capacity": w.capacity,
        "busy": w.busy,
        "server": w.header.server_software,
        "accept_hook": w.header.accept_hook,
        "cooperative": w.header.cooperative,
        "accelerated": w.header.accelerated,
        "multithread": bool(w.header.flags & fmt.HEADER_FLAG_MULTITHREAD),
        "rss_bytes": w.rss,
        "wait_sources": dict(w.wait_sources),
        "slots": [slot_view(s) for s in list(w.slots)],
        "stuck": [slot_view(s) for s in list(w.stuck)],
    }
