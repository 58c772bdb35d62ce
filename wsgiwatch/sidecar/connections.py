"""Joining the kernel's view of sockets with the workers' scoreboards.

For each worker we know (from ``/proc/PID/fd``) which sockets it holds. A connection to one
of the server's listeners is then, as DESIGN.md classifies it:

- in the kernel accept backlog: inode 0, held by no process (healthy queueing);
- *waiting inside the worker*: held by it, not being served by any of its scoreboard slots,
  and either with unread bytes (gthread, cheroot) or with data received more recently than
  data sent (waitress, which reads the request before queueing it);
- otherwise idle (a kept-alive connection between requests) or being served.

A waiting connection's arrival is estimated from ``tcpi_last_data_recv`` (jiffy resolution),
against the middle of the dump (:meth:`wsgiwatch.kernel.KernelSnapshot.arrival_ns`).
"""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass

from wsgiwatch.kernel import KernelSnapshot, TcpSocket

LISTEN = "LISTEN"
ESTABLISHED = "ESTABLISHED"


def plain_addr(addr: str) -> str:
    """An IPv4 peer as the worker saw it: the kernel's dual-stack sockets show it as
    ``::ffff:a.b.c.d``, while the middleware records ``a.b.c.d``."""
    return addr[7:] if addr.startswith("::ffff:") else addr


@dataclass(frozen=True, slots=True)
class Waiting:
    """A request that has reached a worker and is not being served."""

    pid: int
    peer_addr: str
    peer_port: int
    arrival_ns: int  # CLOCK_MONOTONIC estimate
    unread: bool  # bytes still in the socket: the worker has not even read it


def listener_label(sock: TcpSocket) -> str:
    addr = f"[{sock.local_addr}]" if ":" in sock.local_addr else sock.local_addr
    return f"{addr}:{sock.local_port}"


def find_listeners(
    snapshot: KernelSnapshot,
    inodes_by_pid: Mapping[int, set[int]],
    ports: Iterable[int] | None = None,
) -> list[TcpSocket]:
    """The LISTEN sockets the workers hold (or those on the given ports)."""
    wanted = set(ports or ())
    if wanted:
        return [s for s in snapshot.tcp if s.state == LISTEN and s.local_port in wanted]
    # Each listener asked of each worker's set: a union of every worker's inodes (one per
    # open connection) would be built on every poll for a handful of listeners.
    maps = list(inodes_by_pid.values())
    return [s for s in snapshot.tcp if s.state == LISTEN and any(s.inode in m for m in maps)]


def is_waiting(sock: TcpSocket, served_before: bool) -> bool:
    """Whether a request is in the socket or in the worker's hands, not yet answered.

    Received after the last send means a request is pending. On a fresh connection nothing
    was ever sent, and the request often lands in the same jiffy as the handshake: equal
    ages then mean waiting too, unless the worker has already answered this connection
    (then it is an idle kept-alive connection whose answer went out in the same jiffy).
    """
    if sock.rqueue > 0:
        return True
    recv, sent = sock.last_data_recv_ms, sock.last_data_sent_ms
    if recv is None or sent is None:
        return False
    return recv < sent or (recv == sent and not served_before)


def classify(
    snapshot: KernelSnapshot,
    listeners: list[TcpSocket],
    inodes_by_pid: Mapping[int, set[int]],
    serving: Mapping[int, set[tuple[str, int]]],
    served: Mapping[int, Container[tuple[str, int]]],
    unnamed: Mapping[int, int] | None = None,
) -> tuple[list[Waiting], int]:
    """(connections waiting inside workers, connections in the kernel backlog).

    ``serving``: per pid, the peers its scoreboard shows being served now; ``served``: per
    pid, peers it has answered before; ``unnamed``: per pid, how many of the requests it
    serves have no peer port to find their connection by (bjoern, uWSGI pass none). Those
    connections are among the candidates: the ones that came first, since a worker takes
    requests in the order they came, so that many of the oldest are dropped."""
    ports = {s.local_port for s in listeners}
    candidates = [s for s in snapshot.tcp if s.state == ESTABLISHED and s.local_port in ports]
    if not candidates:  # (no connection dumped: the sidecar's usual poll, however many idle)
        return [], 0
    owner: dict[int, int] = {}
    for pid, inodes in inodes_by_pid.items():
        for inode in inodes:
            owner[inode] = pid
    waiting: list[Waiting] = []
    backlog = 0
    for sock in candidates:
        if sock.inode == 0:
            backlog += 1
            continue
        holder = owner.get(sock.inode)
        if holder is None:
            continue
        peer = (plain_addr(sock.peer_addr), sock.peer_port)
        if peer in serving.get(holder, ()) or not is_waiting(sock, peer in served.get(holder, ())):
            continue
        arrival = snapshot.arrival_ns(sock)
        if arrival is None:  # no tcp_info: it is waiting now, since when is unknown
            arrival = snapshot.midpoint_ns
        waiting.append(Waiting(holder, sock.peer_addr, sock.peer_port, arrival, sock.rqueue > 0))
    for pid, count in (unnamed or {}).items():
        mine = sorted((w for w in waiting if w.pid == pid), key=lambda w: w.arrival_ns)
        dropped = set(map(id, mine[:count]))
        waiting = [w for w in waiting if id(w) not in dropped]
    return waiting, backlog
