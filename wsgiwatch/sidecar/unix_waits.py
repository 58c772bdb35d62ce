"""Requests waiting inside workers on unix-socket listeners (gunicorn behind nginx on a
socket, mod_wsgi daemons), from the kernel's view.

Unix connections have no peer port and no last-data times, so this differs from the TCP
side (:mod:`wsgiwatch.sidecar.connections`) in three ways:

- **Which connections wait.** A worker's accepted connections on its unix listener, with
  unread bytes, are waiting; except that a request being served may hold unread bytes too
  (mod_wsgi daemons leave a few), so at most ``held - busy`` of them are waiting: a mod_wsgi
  daemon, which accepts only when a thread is free, never shows a stall for the request it
  is serving.
- **When it arrived.** No kernel time exists for it: it arrived after the previous dump
  that did not show it and before the first that did. The estimate is the middle of that
  interval (error at most half a poll interval), or the accept hook's exact accept time when
  the hook reported this connection (by socket inode).
- **Which finished request it was.** A record from a unix connection carries no peer to find
  it by. A worker serves its waiting connections in the order it accepted them, and a
  request seen waiting at a dump was entered after that dump: so a finished record takes
  the worker's oldest wait last seen before the record's entry. (A request that never
  showed in a dump waited less than a poll interval, and takes none.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from wsgiwatch.kernel import KernelSnapshot, UnixSocket

LISTEN = "LISTEN"
#: A wait that no record took within this long belonged to a request we never saw finish.
WAIT_TTL_NS = 120_000_000_000


@dataclass(slots=True)
class UnixWait:
    """A connection seen waiting inside worker ``pid``."""

    pid: int
    inode: int
    earliest_ns: int  # the previous dump, which did not show it: it arrived after this
    first_seen_ns: int  # the first dump that showed it waiting
    last_seen_ns: int
    accept_ns: int = 0  # the accept hook's exact time, when it reported this connection

    @property
    def arrival_ns(self) -> int:
        if self.accept_ns:
            return self.accept_ns
        return (self.earliest_ns + self.first_seen_ns) // 2


def unix_listeners(
    snapshot: KernelSnapshot, inodes_by_pid: Mapping[int, set[int]]
) -> list[UnixSocket]:
    """The unix LISTEN sockets the workers hold."""
    if not snapshot.unix:  # (most polls: no worker holds a unix listener)
        return []
    held: set[int] = set().union(*inodes_by_pid.values()) if inodes_by_pid else set()
    return [s for s in snapshot.unix if s.state == LISTEN and s.inode in held and s.path]


def held_connections(
    snapshot: KernelSnapshot, listeners: list[UnixSocket], inodes_by_pid: Mapping[int, set[int]]
) -> dict[int, list[UnixSocket]]:
    """Per pid, its accepted connections on these listeners (they share the listener's
    name)."""
    paths = {s.path for s in listeners}
    if not paths:  # (no unix listener: nothing to map, however many sockets the workers hold)
        return {}
    owner = {inode: pid for pid, inodes in inodes_by_pid.items() for inode in inodes}
    out: dict[int, list[UnixSocket]] = {}
    for sock in snapshot.unix:
        if sock.state == LISTEN or sock.path not in paths:
            continue
        pid = owner.get(sock.inode)
        if pid is not None:
            out.setdefault(pid, []).append(sock)
    return out


class UnixWaits:
    """The waits seen so far, per worker; updated once per poll."""

    def __init__(self) -> None:
        self.waits: dict[tuple[int, int], UnixWait] = {}
        self._taken: set[tuple[int, int]] = set()
        self._last_dump_ns = 0
        self._accepts: dict[int, int] = {}  # inode -> the accept hook's accept time
        self.current: set[tuple[int, int]] = set()  # the waits the last dump showed

    def note_accept(self, inode: int, accept_ns: int) -> None:
        """The accept hook accepted the unix connection ``inode`` at ``accept_ns``."""
        if len(self._accepts) > 8192:
            self._accepts.clear()
        self._accepts[inode] = accept_ns
        for wait in self.waits.values():
            if wait.inode == inode:
                wait.accept_ns = accept_ns

    def update(
        self,
        snapshot: KernelSnapshot,
        held: Mapping[int, list[UnixSocket]],
        busy: Mapping[int, int],
        now_ns: int,
    ) -> None:
        mid = snapshot.midpoint_ns
        earliest = self._last_dump_ns or mid
        self._last_dump_ns = mid
        seen: set[tuple[int, int]] = set()
        for pid, socks in held.items():
            unread = [s for s in socks if s.rqueue > 0]
            room = max(0, len(socks) - busy.get(pid, 0))
            known = [s for s in unread if (pid, s.inode) in self.waits]
            new = [s for s in unread if (pid, s.inode) not in self.waits]
            # The oldest first: when more have bytes than can be waiting, the newest
            # connections are the ones being served (mod_wsgi), not waiting.
            for sock in (known + new)[:room]:
                key = (pid, sock.inode)
                if key in self._taken:
                    continue
                seen.add(key)
                wait = self.waits.get(key)
                if wait is None:
                    wait = self.waits[key] = UnixWait(
                        pid, sock.inode, earliest, mid, mid, self._accepts.get(sock.inode, 0)
                    )
                wait.last_seen_ns = mid
        self.current = seen
        for key, wait in list(self.waits.items()):
            if now_ns - wait.last_seen_ns > WAIT_TTL_NS:
                del self.waits[key]
        # A taken wait still showing cannot be taken again; once gone, forget it.
        self._taken &= {(pid, s.inode) for pid, socks in held.items() for s in socks}

    def waiting_now(self) -> Iterable[UnixWait]:
        """The waits the last dump showed."""
        return (self.waits[k] for k in self.current if k in self.waits)

    def take(self, pid: int, entry_ns: int) -> UnixWait | None:
        """The wait a record of ``pid`` entered at ``entry_ns`` came from, if any."""
        candidates = [w for w in self.waits.values() if w.pid == pid and w.last_seen_ns <= entry_ns]
        if not candidates:
            return None
        wait = min(candidates, key=lambda w: (w.arrival_ns, w.first_seen_ns))
        key = (pid, wait.inode)
        del self.waits[key]
        self._taken.add(key)
        self.current.discard(key)
        return wait

    def forget_pid(self, pid: int) -> None:
        for key in [k for k in self.waits if k[0] == pid]:
            del self.waits[key]
