"""The workers' sockets, once per poll, at a cost that does not grow with idle connections.

A plain :meth:`KernelObserver.snapshot` plus ``/proc/PID/fd`` of every worker costs, each
poll, a readlink per open fd and a parsed record per TCP socket on the host: with 1,000
idle keep-alive connections that was two thirds of the sidecar's idle CPU. A
:class:`SocketWatch` asks for less, and remembers:

- **fd maps are cached** per worker pid. ``/proc/PID/fd`` is read again only for a new pid,
  when the dump shows a connection on one of our listeners whose inode no map holds (it
  was accepted since: all pids are rescanned once, and an inode still unknown after that
  belongs to another process and is remembered as such), and every ``rescan_s`` as a
  safety net. A socket inode is never reused while the socket is open, so a cached inode
  cannot point at the wrong connection; a stale one (closed since) is simply not in the dump.
- **the listeners are learned** from a dump of LISTEN sockets only (a handful on any host,
  and no walk of the established-socket hash, which costs about a millisecond per dump
  however few sockets match); connections are dumped **only while a worker is at
  capacity** (no request can wait inside a worker with a free slot), **by the listeners'
  local ports** (the kernel filters: the clients' own sockets on the same host stay out),
  both families in one walk, and **quiet ones are skipped** by the parser: established,
  held, nothing unread, answered more recently than asked (``skip_quiet``). What remains
  is what a request can be waiting on.
- **unix sockets** are dumped only while a worker holds a unix listener (checked on every
  rescan): most servers have none, and a host has hundreds of unix sockets.

The snapshot it returns holds the listeners and those connections; everything downstream
(:mod:`wsgiwatch.sidecar.connections`) reads it as it reads a full one.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Iterable

from wsgiwatch.kernel import KernelObserver, KernelSnapshot, netlink
from wsgiwatch.kernel.records import TcpSocket, UnixSocket

__all__ = ["SocketWatch"]

#: Every worker's fds are read again at least this often, whatever the dumps say.
RESCAN_S = 30.0
_LISTEN = 1 << 10
#: The states a request can be waiting in (or a connection in the backlog): not LISTEN
#: (dumped apart), not TIME_WAIT or NEW_SYN_RECV (held by no process).
_CONNECTION_STATES = netlink.DEFAULT_TCP_STATES & ~_LISTEN


class SocketWatch:
    """Each :meth:`poll`: the kernel snapshot of our listeners and their connections, and
    the socket inodes each worker holds. Not thread-safe: one poll loop owns it."""

    def __init__(
        self,
        observer: KernelObserver,
        *,
        listener_ports: Collection[int] | None = None,
        rescan_s: float = RESCAN_S,
    ) -> None:
        self.observer = observer
        self.listener_ports = frozenset(listener_ports or ())
        self.rescan_s = rescan_s
        self.inodes: dict[int, set[int]] = {}  # pid -> socket inodes, as last read
        self._foreign: set[int] = set()  # inodes on our ports that no worker holds
        self._scanned_at = float("-inf")
        self._unix_held = False
        self._held_cache: set[int] | None = None
        #: How many times /proc/PID/fd was read (all pids count one each), and the union of
        #: the maps computed: for tests and the benchmark, which show the caches working.
        self.fd_scans = 0
        self.unions = 0

    # -- fd maps -----------------------------------------------------------------------------
    def _scan(self, pids: Iterable[int]) -> None:
        pids = list(pids)
        if pids:  # an empty scan (no new pid: most polls) leaves the union valid
            self._held_cache = None
        for pid in pids:
            self.inodes[pid] = self.observer.socket_inodes(pid)
            self.fd_scans += 1

    def _rescan_all(self, now: float) -> None:
        self._scan(list(self.inodes))
        self._scanned_at = now
        self._foreign.clear()

    def _held(self) -> set[int]:
        """Every inode some worker holds (recomputed only when a map changed: with 64
        workers and 10,000 connections the union is a few milliseconds)."""
        if self._held_cache is None:
            self.unions += 1
            self._held_cache = set().union(*self.inodes.values()) if self.inodes else set()
        return self._held_cache

    # -- the poll ----------------------------------------------------------------------------
    def poll(
        self, pids: Collection[int], *, connections: bool = True
    ) -> tuple[KernelSnapshot, dict[int, set[int]]]:
        """(snapshot, inodes by pid) for the worker processes ``pids``.

        ``connections=False`` leaves the connections out (listeners and their backlogs
        only): a request can only be waiting inside a worker that is at capacity, so a
        sidecar that sees none at capacity need not pay for the walk of the kernel's
        socket hash that a connection dump costs.
        """
        now = time.monotonic()
        for gone in set(self.inodes) - set(pids):
            del self.inodes[gone]
            self._held_cache = None
        if now - self._scanned_at >= self.rescan_s:
            self._scan(pids)
            self._scanned_at = now
            self._foreign.clear()
            rescanned = True
        else:
            new = [pid for pid in pids if pid not in self.inodes]
            self._scan(new)
            rescanned = bool(new)
        observer = self.observer
        listen = observer.snapshot(
            tcp_states=_LISTEN, unix=rescanned or self._unix_held, skip_quiet=True
        )
        listeners = [s for s in listen.tcp if s.state == "LISTEN"]
        held = self._held()
        unix = self._our_unix(listen.unix, held) if listen.unix else []
        if self._unknown_unix(unix):
            # A unix connection accepted since the maps were read (behind nginx, say).
            self._rescan_all(now)
            held = self._held()
            unix = self._our_unix(listen.unix, held)
            self._foreign |= {s.inode for s in unix if s.inode not in held}
        ports = self.listener_ports or {s.local_port for s in listeners if s.inode in held}
        if not (connections and ports):
            return self._combine(listen, listeners, [], unix, listen), self.inodes
        dump = self._dump_connections(ports)
        if self._unknown(dump.tcp, ports):
            self._rescan_all(now)
            held = self._held()
            if not self.listener_ports:  # a listener opened since may be a worker's now
                wider = {s.local_port for s in listeners if s.inode in held}
                if wider != ports:
                    ports = wider
                    dump = self._dump_connections(ports)
            self._foreign |= {s.inode for s in dump.tcp if s.inode and s.inode not in held}
        conns = [s for s in dump.tcp if s.state != "LISTEN"]
        return self._combine(listen, listeners, conns, unix, dump), self.inodes

    def _dump_connections(self, ports: Collection[int]) -> KernelSnapshot:
        return self.observer.snapshot(
            tcp_ports=ports,
            tcp_states=_CONNECTION_STATES,
            local_only=True,
            skip_quiet=True,
            unix=False,
        )

    @staticmethod
    def _combine(
        listen: KernelSnapshot,
        listeners: list[TcpSocket],
        conns: list[TcpSocket],
        unix: list[UnixSocket],
        timing: KernelSnapshot,
    ) -> KernelSnapshot:
        """One snapshot; its times are the connection dump's (arrival estimates use them)."""
        notices = tuple(dict.fromkeys(listen.notices + timing.notices))
        return KernelSnapshot(
            listeners + conns, unix, timing.started_ns, timing.finished_ns, notices
        )

    def _unknown(self, connections: list[TcpSocket], ports: Collection[int]) -> bool:
        """Whether a connection on our ports has an inode no worker map (nor the known
        foreign set) holds: a connection accepted since the maps were read."""
        held, foreign = self._held(), self._foreign
        return any(
            s.inode
            and s.inode not in held
            and s.inode not in foreign
            and s.local_port in ports
            and s.state != "LISTEN"
            for s in connections
        )

    def _unknown_unix(self, socks: list[UnixSocket]) -> bool:
        """Whether an accepted connection on a worker's unix listener (it shares the
        listener's name) has an inode no worker map, nor the foreign set, holds."""
        held, foreign = self._held(), self._foreign
        return any(
            s.state != "LISTEN" and s.path and s.inode not in held and s.inode not in foreign
            for s in socks
        )

    def _our_unix(self, socks: list[UnixSocket], held: set[int]) -> list[UnixSocket]:
        """The workers' unix listeners and the connections on them (remembering whether
        there are any, so that later polls skip the unix dump when there are none)."""
        paths = {s.path for s in socks if s.state == "LISTEN" and s.inode in held and s.path}
        self._unix_held = bool(paths)
        named = {s.inode for s in socks if s.path in paths}
        return [s for s in socks if s.inode in named or s.peer_inode in named]
