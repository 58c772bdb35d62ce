"""The kernel's side of one poll: listener backlogs, and connections waiting inside workers.

One view of the kernel's sockets per poll, joined with the sockets each worker holds
(``/proc/PID/fd``) and with what each worker's scoreboard says it is serving
(:mod:`wsgiwatch.sidecar.connections` does the classifying). The view comes from a
:class:`~wsgiwatch.kernel.socket_watch.SocketWatch`, whose cost does not grow with idle
connections: fd maps cached, connections dumped only while a worker is at capacity.
"""

from __future__ import annotations

from collections.abc import Collection, Container, Mapping, Sequence

import structlog

from wsgiwatch.kernel import KernelError, KernelObserver, KernelSnapshot, visibility
from wsgiwatch.kernel.socket_watch import SocketWatch
from wsgiwatch.sidecar.arrivals import serving
from wsgiwatch.sidecar.backlog_arrivals import IdentityRequests, InBacklog, asked, in_backlog
from wsgiwatch.sidecar.connections import Waiting, classify, find_listeners, listener_label
from wsgiwatch.sidecar.unix_waits import UnixWaits, held_connections, unix_listeners
from wsgiwatch.sidecar.workers import Worker

log = structlog.get_logger("wsgiwatch.sidecar")


class KernelView:
    """What the last dump showed. Each attribute is replaced whole, never mutated, since
    scrapes read them from other threads."""

    def __init__(self, observer: KernelObserver, listener_ports: Collection[int]) -> None:
        self.observer = observer
        self.listener_ports = set(listener_ports)
        self.sockets = SocketWatch(observer, listener_ports=self.listener_ports)
        self.listen_backlog: dict[str, tuple[int, int]] = {}  # listener -> (queued, limit)
        self.backlog_connections = 0  # connections in the accept queues, held by no process
        self.waiting: list[Waiting] = []  # TCP connections waiting inside a worker
        self.in_backlog: list[InBacklog] = []  # TCP connections in listen backlogs, by peer
        self.identity = IdentityRequests()  # workers asked for their connections' ports
        self.unix = UnixWaits()  # unix connections waiting inside a worker
        self.blind: dict[int, str] = {}  # pid -> why we cannot see its sockets
        self.notices: tuple[str, ...] = ()
        self._error_logged = False

    def poll(
        self,
        live: Sequence[Worker],
        answered: Mapping[int, Container[tuple[str, int]]],
        now: int,
    ) -> KernelSnapshot | None:
        """Dump and classify. ``answered``: per pid, peers it has answered before. None
        when the dump failed (counted as a notice and logged once)."""
        ports = self.listener_ports or None
        # No request can wait inside a worker with a free slot: without one at capacity,
        # the listeners (and their backlogs) are all there is to see.
        full = any(w.busy >= w.blocking_capacity for w in live)
        try:
            snapshot, inodes = self.sockets.poll([w.pid for w in live], connections=full)
        except KernelError as exc:  # a reply we cannot parse: report it, keep the spools
            self.notices = (f"kernel dump failed: {exc}",)
            if not self._error_logged:
                self._error_logged = True
                log.error("kernel.dump_failed", error=str(exc))
            self._note_blind(live, self.sockets.inodes, failed=True)
            return None
        self.notices = snapshot.notices
        self._note_blind(live, inodes, failed=bool(snapshot.notices))
        listeners = find_listeners(snapshot, inodes, ports)
        unix = unix_listeners(snapshot, inodes)
        backlog = {listener_label(s): (s.rqueue, s.wqueue) for s in listeners}
        backlog.update({f"unix:{s.path}": (s.rqueue, s.wqueue) for s in unix})
        self.listen_backlog = backlog
        held = held_connections(snapshot, unix, inodes)
        self.unix.update(snapshot, held, {w.pid: w.busy for w in live}, now)
        busy = {w.pid: serving(w.slots) for w in live}
        # A slot whose port does not name its connection: none given (bjoern, uWSGI's
        # --http-socket), or uWSGI's REMOTE_PORT, the client's port to a proxy in front
        # (its --http router, nginx uwsgi_pass). Else the connection it serves looks waiting.
        unnamed = {w.pid: sum(1 for s in w.slots if not s.peer_port or asked(w)) for w in live}
        self.waiting, self.backlog_connections = classify(
            snapshot, listeners, inodes, busy, answered, {p: n for p, n in unnamed.items() if n}
        )
        # Seen only in dumps with connections (a worker at capacity): that is when any wait.
        self.in_backlog = in_backlog(snapshot, listeners, inodes) if full else []
        self.identity.update(live, self.in_backlog, now)
        return snapshot

    def _note_blind(
        self, live: Sequence[Worker], inodes: Mapping[int, set[int]], failed: bool
    ) -> None:
        """Which workers we cannot see, and why (``visibility``); logged once per worker."""
        blind: dict[int, str] = {}
        for w in live:
            reason = visibility.NO_SOCK_DIAG if failed else None
            if reason is None:
                reason = self.observer.blindness(w.pid, fds_seen=bool(inodes.get(w.pid)))
            if reason is not None:
                blind[w.pid] = reason
                if w.pid not in self.blind:
                    log.warning(
                        "kernel.worker_unseen",
                        pid=w.pid,
                        worker=w.index,
                        reason=reason,
                        remedy=visibility.REMEDIES[reason],
                    )
        self.blind = blind

    @property
    def usable(self) -> bool:
        return not self.notices
