"""Record the netlink fixtures in ``fixtures/`` from this machine's kernel.

Run ``.venv/bin/python tests/kernel/capture_fixtures.py`` (Linux) to re-record. It opens the
sockets of ``conftest.scenario``, saves the raw reply datagrams of the dumps, and writes what
is known about those sockets *from the sockets themselves* to ``manifest.json``, which the
fixture tests check the parser against.
"""

from __future__ import annotations

import json
import platform
import socket
import struct
from pathlib import Path

from conftest import scenario

from wsgiwatch.kernel import netlink

FIXTURES = Path(__file__).parent / "fixtures"


def capture(sock: socket.socket, request: bytes, seq: int) -> bytes:
    """Raw reply datagrams of one request, concatenated (each holds whole messages)."""
    sock.sendto(request, (0, 0))
    chunks = []
    while True:
        chunk = sock.recv(netlink.RECV_BUFFER_SIZE)
        chunks.append(chunk)
        try:
            _, done = netlink.split_messages(chunk, seq=seq)
        except netlink.NetlinkError:
            done = True
        if done:
            return b"".join(chunks)


def main() -> None:
    with scenario() as facts, netlink.open_socket() as sock:
        for name, family in (("v4", socket.AF_INET), ("v6", socket.AF_INET6)):
            seq = netlink.next_seq()
            ports = [facts[name]["listener_port"]]
            request = netlink.build_inet_diag_request(family, seq, ports=ports)
            (FIXTURES / f"inet_diag_{name}.bin").write_bytes(capture(sock, request, seq))
            facts[name]["seq"] = seq
        seq = netlink.next_seq()
        data = capture(sock, netlink.build_unix_diag_request(seq), seq)
        (FIXTURES / "unix_diag.bin").write_bytes(data)
        facts["unix"]["seq"] = seq
        # A filter program with an opcode the kernel does not know: NLMSG_ERROR, EINVAL.
        seq = netlink.next_seq()
        bogus = struct.pack("=BBH", 99, 4, 8)
        request = netlink.build_inet_diag_request(socket.AF_INET, seq)
        attr = struct.pack("=HH", 4 + len(bogus), netlink.INET_DIAG_REQ_BYTECODE) + bogus
        request = struct.pack("=I", len(request) + len(attr)) + request[4:] + attr
        (FIXTURES / "nlmsg_error_einval.bin").write_bytes(capture(sock, request, seq))
        facts["error"] = {"seq": seq, "errno": 22}
        facts["kernel"] = {"release": platform.release(), "machine": platform.machine()}
        (FIXTURES / "manifest.json").write_text(json.dumps(facts, indent=2) + "\n")
        # The fixture process 4242 holds the recorded listeners and accepted sockets.
        fd_dir = FIXTURES / "proc" / "4242" / "fd"
        links = {"3": ("v4", "listener_inode"), "4": ("v4", "accepted_inode")}
        links |= {"6": ("unix", "listener_inode"), "7": ("unix", "accepted_inode")}
        for fd, (group, key) in links.items():
            (fd_dir / fd).unlink(missing_ok=True)
            (fd_dir / fd).symlink_to(f"socket:[{facts[group][key]}]")


if __name__ == "__main__":
    main()
