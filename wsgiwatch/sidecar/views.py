"""The sidecar's JSON API, payload by payload: what it sends and what the commands read.

``/api/requests`` is :class:`RecentRequests`, ``/api/state`` is :class:`LiveState`,
``/api/incidents`` is a list of :class:`Incident` (newest first). Times named ``*_ns`` are
CLOCK_MONOTONIC nanoseconds; add ``wall_offset_ns`` for wall-clock ones. Durations named
``*_s`` are seconds. The producer (:mod:`wsgiwatch.sidecar.monitor`) and the consumers
(``wsgiwatch diagnose``, ``top``, ``timeline``, ``demo``) import these types, so a renamed
field is a type error on both sides, not a ``KeyError`` at run time.
"""

from __future__ import annotations

from typing import TypedDict

#: Finished requests the sidecar keeps for ``/api/requests`` (a few minutes of a busy
#: server): a window asked for beyond that is cut short.
RECENT_KEPT = 20000
#: Incidents kept for ``/api/incidents``.
INCIDENTS_KEPT = 1000


def peer_text(addr: str, port: int) -> str:
    """``addr:port``, with IPv6 addresses in brackets as in a URL."""
    return f"[{addr}]:{port}" if ":" in addr else f"{addr}:{port}"


class BlockerRef(TypedDict):
    """A request that held a blocked one back, and the share of the wait blamed on it."""

    pid: int
    request: int
    route: str
    blamed_s: float


class RequestView(TypedDict):
    """One finished request with its queue wait and verdict."""

    worker: int
    pid: int
    tid: int
    request: int
    method: str
    route: str
    status: int
    peer: str
    accept_ns: int | None
    arrival_ns: int | None
    ready_ns: int | None  # max(accept, arrival) from the best source; None: unknown
    entry_ns: int
    exit_ns: int
    wait_s: float | None
    wait_source: str  # hook, mod_wsgi, kernel, backlog, header or none
    blocked: bool
    misrouted: bool
    blockers: list[BlockerRef]
    phases: dict[str, float]  # proxy, backlog, process: where the wait was spent (seconds)


class UnseenWorker(TypedDict):
    """A live worker whose sockets the sidecar cannot see (``wsgiwatch.kernel.visibility``)."""

    worker: int
    pid: int
    reason: str  # not_dumpable, other_user, other_netns, no_sock_diag
    remedy: str


class RecentRequests(TypedDict):
    """``/api/requests``: finished requests of a window, oldest first."""

    now_ns: int
    wall_offset_ns: int
    requests: list[RequestView]


class SlotView(TypedDict):
    """A request running now in a worker."""

    request: int
    method: str
    path: str
    peer: str
    tid: int
    running_s: float


class WorkerView(TypedDict):
    worker: int  # stable index, reused by a replacement worker
    pid: int
    ppid: int
    capacity: int
    busy: int
    server: str
    accept_hook: bool
    cooperative: bool
    accelerated: bool
    multithread: bool
    rss_bytes: int | None
    #: Its finished requests by where their queue wait came from: hook (exact), mod_wsgi,
    #: kernel (a poll saw the request wait), header (a proxy's time), none.
    wait_sources: dict[str, int]
    slots: list[SlotView]  # running now
    stuck: list[SlotView]  # busy far longer than any request: not counted as busy


class StallView(TypedDict):
    """A request in a worker, not being served, while that worker is at capacity."""

    worker: int
    peer: str
    age_s: float
    unread: bool  # its bytes are still in the socket


class ListenerView(TypedDict):
    listener: str
    backlog: int
    limit: int


class LiveState(TypedDict):
    """``/api/state``: the workers and what each runs now, stalls, kernel backlogs."""

    now_ns: int
    wall_offset_ns: int
    workers: list[WorkerView]
    stalls: list[StallView]
    listeners: list[ListenerView]
    kernel: bool  # the kernel's view of sockets is in use
    kernel_unseen_workers: list[UnseenWorker]  # workers that view cannot see, and why
    threshold_s: float


class Victim(TypedDict):
    method: str
    route: str
    status: int
    peer: str
    worker: int
    pid: int
    queue_wait_s: float
    wait_source: str
    duration_s: float


class Blocker(TypedDict):
    method: str
    route: str
    started_s_before_victim: float
    duration_s: float | None  # None: still running when the victim finished
    running: bool
    blamed_s: float


class Incident(TypedDict):
    """One head-of-line incident, as logged (``hol.incident``) and kept for the API."""

    victim: Victim
    blockers: list[Blocker]
    misrouted: bool
    wall_time: float  # when the victim entered the app, epoch seconds
