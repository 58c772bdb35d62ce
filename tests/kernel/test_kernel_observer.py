"""The facade: live snapshots of real sockets, and clean degradation where it cannot work."""

from __future__ import annotations

import errno
import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

import wsgiwatch.kernel as kernel
from wsgiwatch.kernel import (
    KernelObserver,
    KernelSnapshot,
    KernelUnavailable,
    NetlinkError,
    TcpSocket,
    netlink,
)

Facts = dict[str, dict[str, Any]]


def ports_of(facts: Facts) -> set[int]:
    return {facts["v4"]["listener_port"], facts["v6"]["listener_port"]}


def find(snap: KernelSnapshot, local_port: int, peer_port: int, family: int) -> TcpSocket:
    (sock,) = [
        s
        for s in snap.tcp
        if (s.local_port, s.peer_port, s.family) == (local_port, peer_port, family)
    ]
    return sock


def check_tcp(snap: KernelSnapshot, facts: Facts) -> None:
    for name, family in (("v4", socket.AF_INET), ("v6", socket.AF_INET6)):
        f = facts[name]
        port = f["listener_port"]
        listener = find(snap, port, 0, family)
        assert listener.state == "LISTEN" and listener.inode == f["listener_inode"]
        assert listener.rqueue == f["backlog_len"]  # accept queue length
        assert listener.wqueue == f["backlog_limit"]
        accepted = find(snap, port, f["client_port"], family)
        assert accepted.rqueue == f["unread"] and accepted.inode == f["accepted_inode"]
        assert find(snap, f["client_port"], port, family).rqueue == f["client_unread"]
        pending = find(snap, port, f["pending_client_port"], family)
        assert (pending.state, pending.inode) == ("ESTABLISHED", 0)
        assert pending in snap.in_backlog()
        assert listener in snap.listening()


def test_live_snapshot_of_known_sockets(facts: Facts) -> None:
    observer = KernelObserver()
    snap = observer.snapshot(tcp_ports=ports_of(facts))
    assert snap.notices == ()
    assert snap.started_ns <= snap.midpoint_ns <= snap.finished_ns
    assert len(snap.tcp) == 10  # the kernel filter kept exactly our sockets
    check_tcp(snap, facts)

    mine = observer.socket_inodes(os.getpid())
    for name in ("v4", "v6", "unix"):
        assert facts[name]["accepted_inode"] in mine
        assert facts[name]["listener_inode"] in mine
    assert 0 not in mine

    u = facts["unix"]
    by_inode = snap.unix_by_inode()
    listener = by_inode[u["listener_inode"]]
    assert (listener.state, listener.path) == ("LISTEN", u["path"])
    assert (listener.rqueue, listener.wqueue) == (u["backlog_len"], u["backlog_limit"])
    accepted = by_inode[u["accepted_inode"]]
    assert (accepted.rqueue, accepted.peer_inode) == (u["unread"], u["client_inode"])
    assert by_inode[u["pending_client_inode"]].peer_inode == 0  # its peer is not accepted yet
    assert by_inode[facts["abstract"]["listener_inode"]].path == facts["abstract"]["path"]

    tcp, unix = observer.sockets_of(os.getpid(), snap)
    assert {s.inode for s in tcp} == {s.inode for s in snap.tcp if s.inode}
    assert u["accepted_inode"] in {s.inode for s in unix}


def test_unfiltered_and_python_filtered_snapshots_agree(facts: Facts) -> None:
    observer = KernelObserver()
    everything = observer.snapshot()
    check_tcp(everything, facts)
    observer._kernel_filter = False  # as after a kernel that refused the filter program
    check_tcp(observer.snapshot(tcp_ports=ports_of(facts), unix=False), facts)
    assert observer.snapshot(tcp_ports=[]).tcp == []


def test_kernel_refusing_the_filter_falls_back_to_python(
    facts: Facts, monkeypatch: pytest.MonkeyPatch
) -> None:
    # An opcode the kernel does not know: it answers EINVAL, as a pre-S_EQ kernel would.
    monkeypatch.setattr(netlink, "build_port_filter", lambda ports: b"\x63\x04\x08\x00")
    observer = KernelObserver()
    with capture_logs() as logs:
        snap = observer.snapshot(tcp_ports=ports_of(facts), unix=False)
    check_tcp(snap, facts)
    assert snap.unix == [] and observer._kernel_filter is False
    assert [(e["event"], e["log_level"]) for e in logs] == [("kernel.port_filter_refused", "info")]


def test_unix_paths_filter(facts: Facts) -> None:
    u = facts["unix"]
    snap = KernelObserver().snapshot(tcp_ports=[], unix_paths=[u["path"]])
    assert snap.tcp == []
    assert {s.inode for s in snap.unix} == {
        u["listener_inode"],
        u["accepted_inode"],
        u["client_inode"],
    }


def test_arrival_estimate(facts: Facts) -> None:
    snap = KernelObserver().snapshot(tcp_ports=ports_of(facts), unix=False)
    accepted = find(snap, facts["v4"]["listener_port"], facts["v4"]["client_port"], 2)
    assert accepted.last_data_recv_ms is not None
    arrival = snap.arrival_ns(accepted)
    assert arrival == snap.midpoint_ns - accepted.last_data_recv_ms * 1_000_000
    no_info = TcpSocket(2, "TIME_WAIT", "a", 1, "b", 2, 0, 0, 0, 0, None, None, None, None)
    assert snap.arrival_ns(no_info) is None


def test_unsupported_platform_gives_empty_snapshot_and_one_notice(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(kernel, "supported", False)
    observer = KernelObserver()
    with capture_logs() as logs:
        first = observer.snapshot(tcp_ports=[80])
        second = observer.snapshot()
    for snap in (first, second):
        assert (snap.tcp, snap.unix) == ([], [])
        assert len(snap.notices) == 1 and "need Linux" in snap.notices[0]
    assert logs == [
        {"event": "kernel.unavailable", "notice": first.notices[0], "log_level": "warning"}
    ]
    with pytest.raises(KernelUnavailable):
        observer.check()


def test_netlink_refused_gives_empty_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> socket.socket:
        raise PermissionError(errno.EPERM, "Operation not permitted")

    monkeypatch.setattr(netlink.socket, "socket", refuse)
    observer = KernelObserver()
    with capture_logs() as logs:
        snap = observer.snapshot()
        observer.snapshot()
    assert (snap.tcp, snap.unix) == ([], [])
    assert "NETLINK_SOCK_DIAG socket refused" in snap.notices[0]
    assert [e["event"] for e in logs] == ["kernel.unavailable"]
    with pytest.raises(KernelUnavailable, match="refused"):
        observer.check()


def test_one_family_refused_keeps_the_other(facts: Facts, monkeypatch: pytest.MonkeyPatch) -> None:
    real_dump = netlink.dump

    def dump(sock: socket.socket, request: bytes, *args: Any, **kwargs: Any) -> Any:
        # A kernel without the both-families request, then with IPv6 disabled at boot.
        if request[4] == netlink.TCPDIAG_GETSOCK or request[16] == socket.AF_INET6:
            raise NetlinkError(errno.ENOENT, "sock_diag request")
        return real_dump(sock, request, *args, **kwargs)

    monkeypatch.setattr(netlink, "dump", dump)
    observer = KernelObserver()
    snap = observer.snapshot(tcp_ports=ports_of(facts), unix=False)
    assert {s.family for s in snap.tcp} == {socket.AF_INET} and len(snap.tcp) == 5
    assert "TCP/IPv6 dump refused" in snap.notices[0]
    assert observer._one_walk is False  # asked once, then one dump per family


def test_one_dump_covers_both_families(facts: Facts, monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel walks its socket hash once per TCP dump: one request for both families."""
    requests: list[int] = []
    real_dump = netlink.dump

    def dump(sock: socket.socket, request: bytes, *args: Any, **kwargs: Any) -> Any:
        requests.append(request[4])
        return real_dump(sock, request, *args, **kwargs)

    monkeypatch.setattr(netlink, "dump", dump)
    snap = KernelObserver().snapshot(tcp_ports=ports_of(facts), unix=False)
    check_tcp(snap, facts)
    assert requests == [netlink.TCPDIAG_GETSOCK]


def test_check_passes_here() -> None:
    KernelObserver().check()
    assert kernel.supported


def test_fixture_procfs_with_fixture_dump() -> None:
    """The facade's pieces on fixture data only: what a non-Linux test run can check."""
    fixtures = Path(__file__).parent / "fixtures"
    manifest = json.loads((fixtures / "manifest.json").read_text())
    v4, u = manifest["v4"], manifest["unix"]
    tcp, _ = netlink.parse_inet_diag((fixtures / "inet_diag_v4.bin").read_bytes())
    unix, _ = netlink.parse_unix_diag((fixtures / "unix_diag.bin").read_bytes())
    snap = KernelSnapshot(tcp, unix, 0, 0)
    observer = KernelObserver(str(fixtures / "proc"))
    held_tcp, held_unix = observer.sockets_of(4242, snap)
    assert {s.state for s in held_tcp} == {"LISTEN", "ESTABLISHED"}
    assert {s.inode for s in held_tcp} == {v4["listener_inode"], v4["accepted_inode"]}
    assert {s.inode for s in held_unix} == {u["listener_inode"], u["accepted_inode"]}
    assert observer.process_start_ticks(4242) == 123456
