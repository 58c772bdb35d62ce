"""Live stalls: requests in a worker, not being served, while that worker is at capacity.

The kernel's view says which connections wait inside which worker (TCP: with their
arrival; unix sockets: with the arrival :mod:`wsgiwatch.sidecar.unix_waits` estimates).
Without the kernel, the accept hook's "accepted, not started" is all there is: a
connection that never sends (a TCP health check) looks the same until it expires, so
those expire sooner.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from wsgiwatch.sidecar.arrivals import PeerKey, peer_key
from wsgiwatch.sidecar.connections import Waiting
from wsgiwatch.sidecar.unix_waits import UnixWait
from wsgiwatch.sidecar.workers import Worker

#: Without the kernel's view, an accept with no request after this long is not a stall.
ACCEPT_ALONE_TTL_NS = 10_000_000_000

Stall = tuple[Worker, Waiting]


def find_stalls(
    live: Sequence[Worker],
    *,
    kernel_waiting: Iterable[Waiting] | None,
    unix_waiting: Iterable[UnixWait],
    pending_accepts: Iterable[tuple[PeerKey, int]],
    now: int,
) -> list[Stall]:
    """``kernel_waiting`` is None when the kernel's view is not in use this poll."""
    full = {w.pid: w for w in live if w.busy >= w.capacity}
    stalls: dict[PeerKey, Stall] = {}
    for item in kernel_waiting or ():
        worker = full.get(item.pid)
        if worker is not None:
            stalls[peer_key(item.pid, item.peer_addr, item.peer_port)] = (worker, item)
    for wait in unix_waiting:
        worker = full.get(wait.pid)
        if worker is not None:
            stalls[(wait.pid, "unix", wait.inode)] = (
                worker,
                Waiting(wait.pid, "unix", wait.inode, wait.arrival_ns, True),
            )
    if kernel_waiting is None:
        for (pid, peer, port), ready_ns in pending_accepts:
            worker = full.get(pid)
            if worker is None or now - ready_ns > ACCEPT_ALONE_TTL_NS:
                continue
            stalls[(pid, peer, port)] = (worker, Waiting(pid, peer, port, ready_ns, False))
    return list(stalls.values())
