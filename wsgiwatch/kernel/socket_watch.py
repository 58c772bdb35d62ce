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
- **the listeners are learned** from a dump of LISTEN sockets only (a handful on any host)
  and the workers' fds; connections are then dumped **by the listeners' local ports**
  (the kernel filters: the clients' own sockets on the same host stay out) and **quiet ones
  are skipped** by the parser: established, held, nothing unread, answered more recently
  than asked (``skip_quiet``). What remains is what a request can be waiting on.
- **unix sockets** are dumped only while a worker holds a unix listener (checked on every
  rescan): most servers have none, and a host has hundreds of unix sockets.

The snapshot it returns holds the listeners and those connections; everything downstream
(:mod:`wsgiwatch.sidecar.connections`) reads it as it reads a full one.
"""

from __future__ import annotations

import errno
import socket
import time
from collections.abc import Collection, Iterable

from wsgiwatch.kernel import KernelObserver, KernelSnapshot, netlink, supported
from wsgiwatch.kernel.errors import KernelUnavailable, NetlinkError
from wsgiwatch.kernel.records import TcpSocket, UnixSocket

__all__ = ["SocketWatch"]

#: Every worker's fds are read again at least this often, whatever the dumps say.
RESCAN_S = 30.0
_LISTEN = 1 << 10
#: The states a request can be waiting in (or a connection in the backlog): not LISTEN
#: (dumped apart), not TIME_WAIT or NEW_SYN_RECV (held by no process).
_CONNECTION_STATES = netlink.DEFAULT_TCP_STATES & ~_LISTEN
_FAMILIES = ((socket.AF_INET, "IPv4"), (socket.AF_INET6, "IPv6"))


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
        self._kernel_filter = True  # cleared if the kernel refuses the port filter program
        #: How many times /proc/PID/fd was read (all pids count one each): for tests and
        #: the benchmark, which show the cache working.
        self.fd_scans = 0

    # -- fd maps -----------------------------------------------------------------------------
    def _scan(self, pids: Iterable[int]) -> None:
        for pid in pids:
            self.inodes[pid] = self.observer.socket_inodes(pid)
            self.fd_scans += 1

    def _rescan_all(self, now: float) -> None:
        self._scan(list(self.inodes))
        self._scanned_at = now
        self._foreign.clear()

    def _held(self) -> set[int]:
        return set().union(*self.inodes.values()) if self.inodes else set()

    # -- the poll ----------------------------------------------------------------------------
    def poll(self, pids: Collection[int]) -> tuple[KernelSnapshot, dict[int, set[int]]]:
        """(snapshot, inodes by pid) for the worker processes ``pids``."""
        now = time.monotonic()
        for gone in set(self.inodes) - set(pids):
            del self.inodes[gone]
        if now - self._scanned_at >= self.rescan_s:
            self._scan(pids)
            self._scanned_at = now
            self._foreign.clear()
            rescanned = True
        else:
            new = [pid for pid in pids if pid not in self.inodes]
            self._scan(new)
            rescanned = bool(new)
        notices: list[str] = []
        if not supported:
            return self.observer.snapshot(tcp_ports=()), self.inodes
        try:
            sock = netlink.open_socket()
        except KernelUnavailable as exc:
            self.observer._notice(notices, str(exc))
            stamp = time.monotonic_ns()
            return KernelSnapshot([], [], stamp, stamp, tuple(notices)), self.inodes
        with sock:
            started = time.monotonic_ns()
            listeners = self._dump_tcp(sock, _LISTEN, None, notices)
            held = self._held()
            ports = self.listener_ports or {s.local_port for s in listeners if s.inode in held}
            connections = self._dump_tcp(sock, _CONNECTION_STATES, ports, notices)
            if self._unknown(connections, ports):
                self._rescan_all(now)
                rescanned = True
                held = self._held()
                if not self.listener_ports:  # a listener opened since may be ours now
                    ports = {s.local_port for s in listeners if s.inode in held}
                    connections = self._dump_tcp(sock, _CONNECTION_STATES, ports, notices)
                self._foreign = {s.inode for s in connections if s.inode and s.inode not in held}
            unix = self._dump_unix(sock, held, notices, rescanned=rescanned)
            finished = time.monotonic_ns()
        tcp = listeners + connections
        return KernelSnapshot(tcp, unix, started, finished, tuple(notices)), self.inodes

    def _unknown(self, connections: list[TcpSocket], ports: Collection[int]) -> bool:
        """Whether a connection on our ports has an inode no worker map (nor the known
        foreign set) holds: a connection accepted since the maps were read."""
        held = self._held()
        known = held | self._foreign
        return any(s.inode and s.inode not in known and s.local_port in ports for s in connections)

    def _dump_tcp(
        self,
        sock: socket.socket,
        states: int,
        ports: Collection[int] | None,
        notices: list[str],
    ) -> list[TcpSocket]:
        if ports is not None and not ports:
            return []
        out: list[TcpSocket] = []
        quiet = ports is not None
        for family, label in _FAMILIES:
            try:
                out += self._dump_family(sock, family, states, ports, quiet)
            except NetlinkError as exc:  # e.g. IPv6 disabled at boot: ENOENT for that family
                self.observer._notice(notices, f"TCP/{label} dump refused by the kernel: {exc}")
        return out

    def _dump_family(
        self,
        sock: socket.socket,
        family: int,
        states: int,
        ports: Collection[int] | None,
        quiet: bool,
    ) -> list[TcpSocket]:
        parse = netlink.parse_inet_diag
        if ports is not None and self._kernel_filter:
            seq = netlink.next_seq()
            request = netlink.build_inet_diag_request(
                family, seq, states=states, ports=ports, local_only=True
            )
            try:
                return netlink.dump(sock, request, seq, parse, skip_quiet=quiet)
            except NetlinkError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                # Kernels before S_EQ (4.x) reject the program: filter here instead.
                self._kernel_filter = False
        seq = netlink.next_seq()
        request = netlink.build_inet_diag_request(family, seq, states=states)
        return netlink.dump(
            sock, request, seq, parse, ports=ports, local_only=True, skip_quiet=quiet
        )

    def _dump_unix(
        self, sock: socket.socket, held: set[int], notices: list[str], *, rescanned: bool
    ) -> list[UnixSocket]:
        if not (rescanned or self._unix_held):
            return []
        seq = netlink.next_seq()
        try:
            socks = netlink.dump(
                sock, netlink.build_unix_diag_request(seq), seq, netlink.parse_unix_diag
            )
        except NetlinkError as exc:  # unix_diag not built or not loadable
            self.observer._notice(notices, f"unix socket dump refused by the kernel: {exc}")
            return []
        listeners = {s.path for s in socks if s.state == "LISTEN" and s.inode in held and s.path}
        self._unix_held = bool(listeners)
        if not listeners:
            return []
        named = {s.inode for s in socks if s.path in listeners}
        return [s for s in socks if s.inode in named or s.peer_inode in named]
