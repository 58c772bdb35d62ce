"""SocketWatch on real sockets: what it dumps, what it skips, when it reads /proc again, and
that the sidecar's classification from its view equals the one from a full dump."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from wsgiwatch.kernel import KernelObserver, KernelSnapshot, netlink
from wsgiwatch.kernel.socket_watch import SocketWatch
from wsgiwatch.sidecar.connections import classify, find_listeners

PID = os.getpid()


class Server:
    """A listener in this process, with connections in the states the sidecar tells apart."""

    def __init__(self) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        self.sockets: list[socket.socket] = [self.listener]

    def connect(self, request: bytes | None = None) -> socket.socket:
        client = socket.create_connection(("127.0.0.1", self.port))
        self.sockets.append(client)
        if request:
            client.sendall(request)
        return client

    def accept(self) -> socket.socket:
        conn, _ = self.listener.accept()
        self.sockets.append(conn)
        return conn

    def idle(self, answer_after_s: float = 0.01) -> socket.socket:
        """A kept-alive connection between requests: asked, answered, quiet since (answered
        a jiffy or more after it was asked, or with 0 most likely within the same jiffy)."""
        client = self.connect(b"GET / HTTP/1.1\r\n\r\n")
        conn = self.accept()
        conn.recv(100)
        time.sleep(answer_after_s)
        conn.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
        client.recv(100)
        return conn

    def close(self) -> None:
        for s in self.sockets:
            s.close()


@pytest.fixture
def server() -> Iterator[Server]:
    s = Server()
    try:
        yield s
    finally:
        s.close()


def ours(snap: KernelSnapshot, port: int) -> list[tuple[str, int]]:
    return sorted((s.state, s.peer_port) for s in snap.tcp if s.local_port == port)


def test_quiet_connections_are_skipped_and_fds_are_read_once(server: Server) -> None:
    idle = [server.idle() for _ in range(3)] + [server.idle(0) for _ in range(2)]
    watch = SocketWatch(KernelObserver())
    snap, inodes = watch.poll([PID])
    assert ours(snap, server.port) == [("LISTEN", 0)]  # the five idle ones: skipped
    assert all(s.local_port != server.port or s.state == "LISTEN" for s in snap.tcp)
    assert {os.fstat(c.fileno()).st_ino for c in idle} <= inodes[PID]
    assert (watch.fd_scans, watch.unions) == (1, 1)
    for _ in range(3):
        watch.poll([PID])
    assert watch.fd_scans == 1  # nothing new on our port: the fd map was not read again
    assert watch.unions == 1  # nor the union of the maps recomputed (10,000 inodes at scale)


def test_a_new_waiting_connection_is_seen_and_its_owner_found(server: Server) -> None:
    server.idle()
    watch = SocketWatch(KernelObserver())
    watch.poll([PID])
    client = server.connect(b"GET /waiting HTTP/1.1\r\n\r\n")
    conn = server.accept()  # accepted, request unread: a stall if the worker is busy
    snap, inodes = watch.poll([PID])
    port = client.getsockname()[1]
    [sock] = [s for s in snap.tcp if s.local_port == server.port and s.peer_port == port]
    assert sock.rqueue > 0 and sock.inode == os.fstat(conn.fileno()).st_ino
    assert sock.inode in inodes[PID] and watch.fd_scans == 2  # one rescan found it
    # The client's own socket (local port ephemeral) is not ours: the kernel left it out.
    assert not [s for s in snap.tcp if s.local_port == port]


def test_the_backlog_needs_no_rescan(server: Server) -> None:
    watch = SocketWatch(KernelObserver())
    watch.poll([PID])
    server.connect(b"GET / HTTP/1.1\r\n\r\n")  # never accepted: in the kernel backlog
    snap, _ = watch.poll([PID])
    assert [s.inode for s in snap.in_backlog() if s.local_port == server.port] == [0]
    [listener] = [s for s in snap.listening() if s.local_port == server.port]
    assert listener.rqueue == 1
    assert watch.fd_scans == 1


@contextlib.contextmanager
def other_process() -> Iterator[int]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        yield proc.pid
    finally:
        proc.kill()  # our own child, by its pid
        proc.wait()


def test_connections_no_worker_holds_are_remembered_not_rescanned(server: Server) -> None:
    # The listener is in this process, the "worker" is another one: with listener ports
    # given, the connections here are on our port but held by no worker.
    with other_process() as worker:
        watch = SocketWatch(KernelObserver(), listener_ports={server.port})
        server.connect(b"GET / HTTP/1.1\r\n\r\n")
        server.accept()  # unread: interesting, and unknown
        watch.poll([worker])
        scans = watch.fd_scans
        watch.poll([worker])
        watch.poll([worker])
        assert watch.fd_scans == scans  # remembered as foreign after the first rescan


def test_a_gone_pid_is_forgotten_and_a_new_one_scanned(server: Server) -> None:
    with other_process() as child:
        watch = SocketWatch(KernelObserver())
        _, inodes = watch.poll([PID, child])
        assert set(inodes) == {PID, child} and watch.fd_scans == 2
        _, inodes = watch.poll([PID])
        assert set(inodes) == {PID} and watch.fd_scans == 2


@pytest.mark.parametrize("parser", ["C", "Python"])
def test_classification_equals_a_full_dumps(
    server: Server, parser: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the sidecar concludes from the watch's view: the same as from a full snapshot
    and a fresh /proc scan (waiting connections and the backlog count), with either
    inet_diag parser."""
    assert netlink.accelerator is not None  # built here: the C parser is the default
    if parser == "Python":
        monkeypatch.setattr(netlink, "accelerator", None)
    for _ in range(3):
        server.idle()
    waiting_clients = [server.connect(b"GET /w HTTP/1.1\r\n\r\n") for _ in range(2)]
    for _ in waiting_clients:
        server.accept()
    server.connect(b"GET /backlog HTTP/1.1\r\n\r\n")
    observer = KernelObserver()
    watch = SocketWatch(observer)
    watch.poll([PID])

    def verdict(snap: KernelSnapshot, inodes: dict[int, set[int]]) -> tuple[object, int]:
        listeners = find_listeners(snap, inodes)
        waiting, backlog = classify(snap, listeners, inodes, {PID: set()}, {PID: set()})
        return sorted((w.pid, w.peer_port, w.unread) for w in waiting), backlog

    snap, inodes = watch.poll([PID])
    full = observer.snapshot()
    full_inodes = {PID: observer.socket_inodes(PID)}
    got, want = verdict(snap, inodes), verdict(full, full_inodes)
    assert got == want
    assert len(got[0]) == 2 and got[1] == 1  # the two unread, the one in the backlog


def test_without_a_worker_at_capacity_only_listeners_are_dumped(server: Server) -> None:
    server.connect(b"GET /w HTTP/1.1\r\n\r\n")
    server.accept()  # unread: what a connection dump would show
    server.connect(b"GET /backlog HTTP/1.1\r\n\r\n")
    watch = SocketWatch(KernelObserver())
    snap, _ = watch.poll([PID], connections=False)
    assert ours(snap, server.port) == [("LISTEN", 0)]
    [listener] = [s for s in snap.listening() if s.local_port == server.port]
    assert listener.rqueue == 1  # the backlog still shows, on the listener
    snap, _ = watch.poll([PID])
    assert len(ours(snap, server.port)) == 3
