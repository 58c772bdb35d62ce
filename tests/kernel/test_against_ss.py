"""Cross-check the netlink parser against iproute2's ``ss`` on live sockets.

The model is psutil's ``test_against_ss``: ``ss`` reads the same kernel interface with C
code written by the kernel's networking maintainers, so any disagreement on ports, states,
queues or inodes is a parsing bug on our side.
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
import time
from typing import Any

from wsgiwatch.kernel import KernelObserver, KernelSnapshot

SS = shutil.which("ss") or "/usr/bin/ss"
SS_STATES = {
    "ESTAB": "ESTABLISHED",
    "LISTEN": "LISTEN",
    "SYN-SENT": "SYN_SENT",
    "SYN-RECV": "SYN_RECV",
    "FIN-WAIT-1": "FIN_WAIT1",
    "FIN-WAIT-2": "FIN_WAIT2",
    "TIME-WAIT": "TIME_WAIT",
    "UNCONN": "CLOSE",
    "CLOSE-WAIT": "CLOSE_WAIT",
    "LAST-ACK": "LAST_ACK",
    "CLOSING": "CLOSING",
}
Facts = dict[str, dict[str, Any]]


def run_ss(*args: str) -> str:
    return subprocess.run([SS, *args], check=True, capture_output=True, text=True).stdout


def split_endpoint(text: str) -> tuple[str, int]:
    """``127.0.0.1:80``, ``[::1]:80``, ``0.0.0.0:*``, ``[::]:*`` as ss prints them."""
    addr, _, port = text.rpartition(":")
    return addr.strip("[]"), 0 if port == "*" else int(port)


def parse_ss_tcp(output: str) -> dict[tuple[str, int, str, int], dict[str, Any]]:
    """``ss -Htanie``: a socket line, then an indented line of tcp_info fields."""
    sockets: dict[tuple[str, int, str, int], dict[str, Any]] = {}
    current: dict[str, Any] | None = None
    for line in output.splitlines():
        if not line.strip():
            continue
        if line[0].isspace():
            assert current is not None, output
            info = dict(re.findall(r"\b(lastsnd|lastrcv|unacked):(\d+)", line))
            current.update({k: int(v) for k, v in info.items()})
            continue
        state, recvq, sendq, local, peer, *rest = line.split()
        laddr, lport = split_endpoint(local)
        paddr, pport = split_endpoint(peer)
        ino = next(int(f[4:]) for f in rest if f.startswith("ino:"))
        current = {"state": SS_STATES[state], "rqueue": int(recvq), "wqueue": int(sendq)}
        current["inode"] = ino
        sockets[(laddr, lport, paddr, pport)] = current
    return sockets


def test_tcp_sockets_agree_with_ss(facts: Facts) -> None:
    ports = sorted({facts["v4"]["listener_port"], facts["v6"]["listener_port"]})
    expression = " or ".join(f"sport = :{p} or dport = :{p}" for p in ports)
    observer = KernelObserver()
    before = time.monotonic_ns()
    snap = observer.snapshot(tcp_ports=ports, unix=False)
    ss = parse_ss_tcp(run_ss("-Htanie", expression))
    elapsed_ms = (time.monotonic_ns() - before) // 1_000_000

    ours = {(s.local_addr, s.local_port, s.peer_addr, s.peer_port): s for s in snap.tcp}
    assert set(ours) == set(ss)
    assert len(ours) == 10
    for key, theirs in ss.items():
        mine = ours[key]
        assert (mine.state, mine.rqueue, mine.wqueue, mine.inode) == (
            theirs["state"],
            theirs["rqueue"],
            theirs["wqueue"],
            theirs["inode"],
        ), key
        assert (mine.unacked or 0) == theirs.get("unacked", 0), key
        if mine.state != "LISTEN":  # ss prints no lastsnd/lastrcv for listeners
            # ss ran after us: its "ms ago" can only have grown, by at most the time between
            # the two dumps plus a jiffy (4 ms at HZ=250, 10 ms at HZ=100).
            for field, value in (
                ("lastrcv", mine.last_data_recv_ms),
                ("lastsnd", mine.last_data_sent_ms),
            ):
                assert value is not None
                assert value <= theirs[field] <= value + elapsed_ms + 10, (key, field)


def parse_ss_unix(output: str) -> dict[int, dict[str, Any]]:
    """``ss -Hxa``: Netid State Recv-Q Send-Q Local Inode Peer PeerInode (no spaces in paths)."""
    sockets = {}
    for line in output.splitlines():
        netid, state, recvq, sendq, local, ino, _peer, peer_ino = line.split()[:8]
        sockets[int(ino)] = {
            "netid": netid,
            "state": SS_STATES[state],
            "rqueue": int(recvq),
            "wqueue": int(sendq),
            "path": None if local == "*" else local,
            "peer_inode": int(peer_ino),
        }
    return sockets


def check_unix(snap: KernelSnapshot, ss: dict[int, dict[str, Any]], inodes: set[int]) -> None:
    ours = snap.unix_by_inode()
    kinds = {"u_str": "stream", "u_dgr": "dgram", "u_seq": "seqpacket"}
    for ino in inodes:
        mine, theirs = ours[ino], ss[ino]
        assert (mine.state, mine.rqueue, mine.wqueue, mine.path) == (
            theirs["state"],
            theirs["rqueue"],
            theirs["wqueue"],
            theirs["path"],
        ), ino
        assert (mine.peer_inode or 0) == theirs["peer_inode"], ino
        assert mine.kind == kinds[theirs["netid"]]


def test_unix_listeners_agree_with_ss_xl(facts: Facts) -> None:
    """``ss -xl`` Recv-Q is the unix accept backlog and Send-Q its limit: ours must match."""
    snap = KernelObserver().snapshot(tcp_ports=[])
    ss = parse_ss_unix(run_ss("-Hxl"))
    listeners = {facts["unix"]["listener_inode"], facts["abstract"]["listener_inode"]}
    check_unix(snap, ss, listeners)
    assert ss[facts["unix"]["listener_inode"]]["rqueue"] == facts["unix"]["backlog_len"] == 1
    # Other processes' listeners may come and go between the two dumps; ours may not.
    assert all(s["state"] == "LISTEN" for s in ss.values())


def test_all_unix_sockets_agree_with_ss_xa(facts: Facts) -> None:
    snap = KernelObserver().snapshot(tcp_ports=[])
    ss = parse_ss_unix(run_ss("-Hxa"))
    u = facts["unix"]
    ours = {u[k] for k in ("listener_inode", "accepted_inode", "client_inode")}
    ours.add(u["pending_client_inode"])
    check_unix(snap, ss, ours)
    # Other processes' sockets may come and go between the two dumps; ours may not.
    assert ours <= set(ss) and ours <= {s.inode for s in snap.unix}


def test_ss_sees_many_connections_as_we_do() -> None:
    """A hundred connections, each partly read: a dump of several datagrams, checked whole."""
    observer = KernelObserver()
    with socket.create_server(("127.0.0.1", 0), backlog=64) as listener:
        port = listener.getsockname()[1]
        clients, servers = [], []
        try:
            for i in range(100):
                clients.append(socket.create_connection(("127.0.0.1", port)))
                servers.append(listener.accept()[0])
                clients[-1].sendall(b"x" * (i + 1))
            for s in servers:
                s.recv(1)  # read one byte of each: i bytes stay unread
            snap = observer.snapshot(tcp_ports=[port], unix=False)
            ss = parse_ss_tcp(run_ss("-Htanie", f"sport = :{port} or dport = :{port}"))
        finally:
            for s in clients + servers:
                s.close()
    ours = {(s.local_addr, s.local_port, s.peer_addr, s.peer_port): s for s in snap.tcp}
    assert set(ours) == set(ss) and len(ours) == 201
    for key, theirs in ss.items():
        assert (ours[key].rqueue, ours[key].inode) == (theirs["rqueue"], theirs["inode"])
    unread = sorted(s.rqueue for s in snap.tcp if s.local_port == port and s.state != "LISTEN")
    assert unread == list(range(100))
