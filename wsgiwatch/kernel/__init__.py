"""What the kernel knows about a WSGI server's sockets: the sidecar's view from outside.

One small facade, :class:`KernelObserver`, over a Linux backend (netlink ``sock_diag`` in
:mod:`wsgiwatch.kernel.netlink`, procfs in :mod:`wsgiwatch.kernel.procfs`), standard library
only. On another platform, or where netlink is refused (seccomp, an LSM), a snapshot is
empty and says why in ``notices``, and the reason is logged once: the sidecar keeps serving
what the spools tell it. The procfs root is injectable so tests can use a fixture tree.

Typical use, in the sidecar's poll loop::

    observer = KernelObserver()
    snap = observer.snapshot(tcp_ports={8000})
    waiting = snap.in_backlog()                        # accepted by no process yet
    tcp, unix = observer.sockets_of(worker_pid, snap)  # what worker_pid holds
"""

from __future__ import annotations

import errno
import socket
import sys
import time
from collections.abc import Collection
from typing import Any, NamedTuple

from wsgiwatch.kernel import netlink, procfs, visibility
from wsgiwatch.kernel.errors import (
    KernelError,
    KernelParseError,
    KernelUnavailable,
    NetlinkError,
)
from wsgiwatch.kernel.records import KernelSnapshot, TcpSocket, UnixSocket

__all__ = [
    "KernelError",
    "KernelObserver",
    "KernelParseError",
    "KernelSnapshot",
    "KernelUnavailable",
    "NetlinkError",
    "TcpSocket",
    "UnixSocket",
    "supported",
]

#: Whether this platform has the kernel interfaces the observer reads (Linux netlink).
supported: bool = sys.platform.startswith("linux") and hasattr(socket, "AF_NETLINK")


def _log() -> Any:
    """structlog, imported when first needed: the worker imports :mod:`.procfs` from this
    package, and the app's process must not need the sidecar's dependencies."""
    import structlog

    return structlog.get_logger("wsgiwatch.kernel")


#: How long a worker's network-namespace verdict is reused (two readlinks per worker per
#: poll otherwise: 1 to 2 ms a poll with 64 workers). A process does not change namespace
#: behind a server's back; the window only matters if a pid is reused within it.
NETNS_TTL_S = 30.0
# More ports than this make a filter program longer than the kernel's attribute limit.
_MAX_FILTER_PORTS = 2048
_FAMILIES = ((socket.AF_INET, "IPv4"), (socket.AF_INET6, "IPv6"))


class _DumpOptions(NamedTuple):
    states: int
    local_only: bool
    skip_quiet: bool


class KernelObserver:
    """Dumps TCP and unix sockets from the kernel, and maps sockets to processes via procfs.

    Each :meth:`snapshot` opens its own netlink socket, so an observer holds no resources
    and may be shared between threads.
    """

    __slots__ = (
        "_kernel_filter",
        "_logged",
        "_netns_since",
        "_netns_verdicts",
        "_one_walk",
        "netns_ttl_s",
        "procfs_root",
    )

    def __init__(self, procfs_root: str = "/proc", *, netns_ttl_s: float = NETNS_TTL_S) -> None:
        self.procfs_root = procfs_root
        self.netns_ttl_s = netns_ttl_s
        self._kernel_filter = True  # cleared if the kernel refuses the port filter program
        self._one_walk = True  # cleared if the kernel refuses TCPDIAG_GETSOCK (both families)
        self._logged: set[str] = set()
        self._netns_verdicts: dict[int, str | None] = {}  # pid -> netns_blindness, cached
        self._netns_since = float("-inf")

    def _notice(self, notices: list[str], text: str) -> None:
        notices.append(text)
        if text not in self._logged:  # once per observer and reason, not once per poll
            self._logged.add(text)
            _log().warning("kernel.unavailable", notice=text)

    def check(self) -> None:
        """Raise :class:`KernelUnavailable` if snapshots cannot see sockets here."""
        if not supported:
            raise KernelUnavailable(f"socket dumps need Linux; this is {sys.platform}")
        netlink.open_socket().close()

    def snapshot(
        self,
        tcp_ports: Collection[int] | None = None,
        *,
        unix: bool = True,
        unix_paths: Collection[str] | None = None,
        tcp_states: int = netlink.DEFAULT_TCP_STATES,
        local_only: bool = False,
        skip_quiet: bool = False,
    ) -> KernelSnapshot:
        """Dump TCP (IPv4 and IPv6, with tcp_info) and, unless ``unix`` is false, unix sockets.

        ``tcp_ports`` keeps TCP sockets whose local *or* peer port is listed (the kernel does
        the filtering); ``None`` keeps all. ``unix_paths`` keeps unix sockets bound to one of
        those names (listeners and the server ends of their connections, which share the
        name) plus the sockets connected to those. TIME_WAIT and half-open request sockets are
        left out. ``tcp_states`` (a bit per state) narrows the TCP states, ``local_only``
        matches ``tcp_ports`` on the local port only, ``skip_quiet`` leaves out connections
        no request can be waiting on (see :func:`netlink.parse_inet_diag`). Unsupported or
        refused: empty lists and a notice. A reply that does not parse raises
        :class:`KernelParseError` (a bug to report, not a condition to expect).
        """
        notices: list[str] = []
        if not supported:
            self._notice(notices, f"socket dumps need Linux; this is {sys.platform}")
            now = time.monotonic_ns()
            return KernelSnapshot([], [], now, now, tuple(notices))
        try:
            sock = netlink.open_socket()
        except KernelUnavailable as exc:
            self._notice(notices, str(exc))
            now = time.monotonic_ns()
            return KernelSnapshot([], [], now, now, tuple(notices))
        with sock:
            started = time.monotonic_ns()
            tcp = self._dump_tcp(sock, tcp_ports, notices, tcp_states, local_only, skip_quiet)
            unix_socks = self._dump_unix(sock, unix_paths, notices) if unix else []
            finished = time.monotonic_ns()
        return KernelSnapshot(tcp, unix_socks, started, finished, tuple(notices))

    def _dump_tcp(
        self,
        sock: socket.socket,
        tcp_ports: Collection[int] | None,
        notices: list[str],
        states: int = netlink.DEFAULT_TCP_STATES,
        local_only: bool = False,
        skip_quiet: bool = False,
    ) -> list[TcpSocket]:
        ports = None if tcp_ports is None else frozenset(tcp_ports)
        if ports is not None and not ports:
            return []
        options = _DumpOptions(states, local_only, skip_quiet)
        if self._one_walk:
            # One walk of the kernel's socket hash for both families (it costs about a
            # millisecond per walk however few sockets match; see build_tcpdiag_request).
            try:
                return self._dump_family(sock, None, ports, options)
            except NetlinkError as exc:
                self._one_walk = False
                _log().info(
                    "kernel.tcpdiag_refused", fallback="one dump per family", error=str(exc)
                )
        out: list[TcpSocket] = []
        for family, label in _FAMILIES:
            try:
                out += self._dump_family(sock, family, ports, options)
            except NetlinkError as exc:  # e.g. IPv6 disabled at boot: ENOENT for that family
                self._notice(notices, f"TCP/{label} dump refused by the kernel: {exc}")
        return out

    def _dump_family(
        self,
        sock: socket.socket,
        family: int | None,
        ports: frozenset[int] | None,
        options: _DumpOptions,
    ) -> list[TcpSocket]:
        """One dump: of ``family``, or of both (``None``: the TCPDIAG_GETSOCK request)."""
        states, local_only, skip_quiet = options

        def request(seq: int, filtered: frozenset[int] | None) -> bytes:
            if family is None:
                return netlink.build_tcpdiag_request(
                    seq, states=states, ports=filtered, local_only=local_only
                )
            return netlink.build_inet_diag_request(
                family, seq, states=states, ports=filtered, local_only=local_only
            )

        parse = netlink.parse_inet_diag
        if ports is not None and self._kernel_filter and len(ports) <= _MAX_FILTER_PORTS:
            seq = netlink.next_seq()
            try:
                return netlink.dump(sock, request(seq, ports), seq, parse, skip_quiet=skip_quiet)
            except NetlinkError as exc:
                if exc.errno != errno.EINVAL:
                    raise
                # Kernels before S_EQ/D_EQ (4.x) reject the program: filter here instead.
                self._kernel_filter = False
                _log().info(
                    "kernel.port_filter_refused", fallback="filtering TCP sockets in Python"
                )
        seq = netlink.next_seq()
        return netlink.dump(
            sock,
            request(seq, None),
            seq,
            parse,
            ports=ports,
            local_only=local_only,
            skip_quiet=skip_quiet,
        )

    def _dump_unix(
        self, sock: socket.socket, unix_paths: Collection[str] | None, notices: list[str]
    ) -> list[UnixSocket]:
        seq = netlink.next_seq()
        try:
            socks = netlink.dump(
                sock, netlink.build_unix_diag_request(seq), seq, netlink.parse_unix_diag
            )
        except NetlinkError as exc:  # unix_diag not built or not loadable
            self._notice(notices, f"unix socket dump refused by the kernel: {exc}")
            return []
        if unix_paths is None:
            return socks
        paths = frozenset(unix_paths)
        named = {s.inode for s in socks if s.path in paths}
        return [s for s in socks if s.inode in named or s.peer_inode in named]

    def socket_inodes(self, pid: int) -> set[int]:
        """Inodes of the sockets ``pid`` holds; empty if it exited or is not ours."""
        return procfs.socket_inodes(pid, self.procfs_root)

    def blindness(self, pid: int, *, fds_seen: bool = False) -> str | None:
        """Why ``pid``'s sockets cannot be seen from here (a
        :data:`wsgiwatch.kernel.visibility.REASONS` word), or None when they can.
        ``fds_seen``: its ``/proc/PID/fd`` was just read, so only the namespace is in doubt."""
        fds = None if fds_seen else visibility.fd_blindness(pid, self.procfs_root)
        return fds or self._netns_blindness(pid)

    def _netns_blindness(self, pid: int) -> str | None:
        """:func:`visibility.netns_blindness`, reused for :data:`NETNS_TTL_S` (all verdicts
        are forgotten together, which also forgets the pids gone since)."""
        now = time.monotonic()
        if now - self._netns_since >= self.netns_ttl_s:
            self._netns_verdicts.clear()
            self._netns_since = now
        verdicts = self._netns_verdicts
        if pid in verdicts:
            return verdicts[pid]
        verdict = verdicts[pid] = visibility.netns_blindness(pid, self.procfs_root)
        return verdict

    def process_start_ticks(self, pid: int) -> int | None:
        """``pid``'s start time in clock ticks after boot, or ``None`` if it is gone."""
        return procfs.process_start_ticks(pid, self.procfs_root)

    def sockets_of(
        self, pid: int, snapshot: KernelSnapshot
    ) -> tuple[list[TcpSocket], list[UnixSocket]]:
        """The sockets of ``snapshot`` that ``pid`` holds (listeners and accepted ones)."""
        inodes = self.socket_inodes(pid)
        return (
            [s for s in snapshot.tcp if s.inode in inodes],
            [s for s in snapshot.unix if s.inode in inodes],
        )
