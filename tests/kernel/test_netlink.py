"""Parsing and building netlink sock_diag messages, on bytes recorded from a real kernel.

The fixtures were recorded by ``capture_fixtures.py``; ``manifest.json`` holds what was known
about the recorded sockets from the sockets themselves (ports, inodes, bytes sent), so these
tests check the parser against facts, not against its own earlier output.
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import json
import socket
import struct
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsgiwatch.kernel import netlink
from wsgiwatch.kernel.errors import KernelError, KernelParseError, NetlinkError
from wsgiwatch.kernel.records import TcpSocket, make_tcp_socket

FIXTURES = Path(__file__).parent / "fixtures"
MANIFEST: dict[str, dict[str, Any]] = json.loads((FIXTURES / "manifest.json").read_text())
HDR = struct.Struct("=IHHII")


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def message_bounds(data: bytes) -> list[int]:
    """Offsets where a message starts, read with a plain struct (not the code under test)."""
    bounds, off = [], 0
    while off < len(data):
        bounds.append(off)
        off += (HDR.unpack_from(data, off)[0] + 3) & ~3
    return [*bounds, len(data)]


def by_ports(socks: list[TcpSocket]) -> dict[tuple[int, int], TcpSocket]:
    return {(s.local_port, s.peer_port): s for s in socks}


# -- recorded replies ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["v4", "v6"])
def test_parse_recorded_tcp_dump(name: str) -> None:
    facts = MANIFEST[name]
    socks, done = netlink.parse_inet_diag(fixture(f"inet_diag_{name}.bin"), seq=facts["seq"])
    assert done
    family = socket.AF_INET if name == "v4" else socket.AF_INET6
    loopback = "127.0.0.1" if name == "v4" else "::1"
    port = facts["listener_port"]
    assert {s.family for s in socks} == {family}
    assert {s.local_addr for s in socks} == {loopback}
    found = by_ports(socks)
    assert len(found) == len(socks) == 5

    listener = found[(port, 0)]
    assert listener.state == "LISTEN"
    assert listener.peer_addr == ("0.0.0.0" if name == "v4" else "::")
    assert listener.inode == facts["listener_inode"]
    assert listener.rqueue == facts["backlog_len"]  # accept queue length
    assert listener.wqueue == facts["backlog_limit"]
    assert (listener.unacked, listener.sacked) == (facts["backlog_len"], facts["backlog_limit"])

    accepted = found[(port, facts["client_port"])]
    assert (accepted.state, accepted.inode) == ("ESTABLISHED", facts["accepted_inode"])
    assert accepted.rqueue == facts["unread"]
    assert accepted.peer_addr == loopback

    client = found[(facts["client_port"], port)]
    assert (client.inode, client.rqueue) == (facts["client_inode"], facts["client_unread"])

    pending = found[(port, facts["pending_client_port"])]
    assert (pending.state, pending.inode, pending.rqueue) == ("ESTABLISHED", 0, 0)
    assert found[(facts["pending_client_port"], port)].inode == facts["pending_client_inode"]

    for s in socks:
        assert s.uid == 0 or s.uid > 0
        assert s.last_data_recv_ms is not None and 0 <= s.last_data_recv_ms < 60_000
        assert s.last_data_sent_ms is not None and 0 <= s.last_data_sent_ms < 60_000


def test_parse_recorded_unix_dump() -> None:
    facts, abstract = MANIFEST["unix"], MANIFEST["abstract"]
    socks, done = netlink.parse_unix_diag(fixture("unix_diag.bin"), seq=facts["seq"])
    assert done
    found = {s.inode: s for s in socks}
    listener = found[facts["listener_inode"]]
    assert (listener.state, listener.path, listener.kind) == ("LISTEN", facts["path"], "stream")
    assert (listener.rqueue, listener.wqueue) == (facts["backlog_len"], facts["backlog_limit"])
    assert listener.peer_inode is None

    accepted = found[facts["accepted_inode"]]
    assert accepted.path == facts["path"]  # an accepted unix socket shares its listener's name
    assert (accepted.state, accepted.rqueue) == ("ESTABLISHED", facts["unread"])
    assert accepted.peer_inode == facts["client_inode"]

    client = found[facts["client_inode"]]
    assert (client.path, client.peer_inode) == (None, facts["accepted_inode"])
    # Still in the backlog: its peer is the not-yet-accepted embryo, which has no inode.
    assert found[facts["pending_client_inode"]].peer_inode == 0

    named = found[abstract["listener_inode"]]
    assert (named.path, named.state, named.wqueue) == (abstract["path"], "LISTEN", 3)


def test_recorded_error_reply_raises_netlink_error() -> None:
    with pytest.raises(NetlinkError) as info:
        netlink.parse_inet_diag(fixture("nlmsg_error_einval.bin"), seq=MANIFEST["error"]["seq"])
    assert info.value.errno == MANIFEST["error"]["errno"]
    assert isinstance(info.value, OSError)


def test_replies_to_another_request_are_skipped() -> None:
    data = fixture("inet_diag_v4.bin")
    assert netlink.parse_inet_diag(data, seq=MANIFEST["v4"]["seq"] + 1000) == ([], False)
    socks, done = netlink.parse_inet_diag(data)  # seq=None: take everything
    assert done and len(socks) == 5


def test_end_limits_the_parsed_bytes() -> None:
    data = fixture("inet_diag_v4.bin")
    bounds = message_bounds(data)
    buf = bytearray(data) + bytearray(b"\xff" * 100)  # a reused receive buffer: junk after n
    socks, done = netlink.parse_inet_diag(buf, bounds[2])
    assert (len(socks), done) == (2, False)


def test_messages_after_done_are_ignored() -> None:
    data = fixture("inet_diag_v4.bin") + b"garbage that is not a message"
    socks, done = netlink.parse_inet_diag(data)
    assert done and len(socks) == 5


# -- malformed input ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["inet_diag_v4.bin", "inet_diag_v6.bin", "unix_diag.bin"])
def test_every_truncation_is_a_clean_prefix_or_a_parse_error(name: str) -> None:
    data = fixture(name)
    parse = netlink.parse_unix_diag if name.startswith("unix") else netlink.parse_inet_diag
    bounds = set(message_bounds(data))
    for cut in range(len(data)):
        if cut in bounds:
            _, done = parse(data[:cut])
            assert not done
        else:
            with pytest.raises(KernelParseError) as info:
                parse(data[:cut])
            assert info.value.offset is not None and 0 <= info.value.offset <= cut


def _set_u32(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + struct.pack("=I", value) + data[offset + 4 :]


def _set_u16(data: bytes, offset: int, value: int) -> bytes:
    return data[:offset] + struct.pack("=H", value) + data[offset + 2 :]


def test_corrupt_lengths_name_the_structure_and_offset() -> None:
    data = fixture("inet_diag_v4.bin")
    second, third = message_bounds(data)[1:3]
    alone = _set_u32(data[second:third], 0, 16 + 40)
    cases = [
        (_set_u32(data, second, 8), "nlmsghdr", second),  # shorter than a header
        (_set_u32(data, second, 1 << 20), "nlmsghdr", second),  # longer than the datagram
        (alone[: 16 + 40], "inet_diag_msg", 16),  # body too short for inet_diag_msg
        (_set_u16(data, second + 16 + 72, 2), "inet_diag attribute", second + 16 + 72),
        (_set_u16(data, second + 16 + 72, 0xFFF0), "inet_diag attribute", second + 16 + 72),
    ]
    for corrupt, what, offset in cases:
        with pytest.raises(KernelParseError) as info:
            netlink.parse_inet_diag(corrupt)
        assert (info.value.what, info.value.offset) == (what, offset)
        assert what in str(info.value) and str(offset) in str(info.value)


def test_unknown_address_family_is_a_parse_error() -> None:
    data = fixture("inet_diag_v4.bin")
    corrupt = data[:16] + b"\x07" + data[17:]
    with pytest.raises(KernelParseError, match="address family 7"):
        netlink.parse_inet_diag(corrupt)


def test_error_status_that_is_not_an_errno_is_a_parse_error() -> None:
    msg = HDR.pack(20, netlink.NLMSG_ERROR, 0, 1, 0) + struct.pack("=i", -(1 << 31))
    with pytest.raises(KernelParseError, match="not a negative errno"):
        netlink.split_messages(msg)
    done = HDR.pack(20, netlink.NLMSG_DONE, 2, 1, 0) + struct.pack("=i", -95)
    with pytest.raises(NetlinkError) as info:
        netlink.split_messages(done)
    assert info.value.errno == 95


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_random_bytes_raise_only_kernel_errors(data: bytes) -> None:
    for parse in (netlink.parse_inet_diag, netlink.parse_unix_diag):
        with contextlib.suppress(KernelError):  # anything else fails the test
            parse(data)


def _header_led_bytes() -> st.SearchStrategy[bytes]:
    """Random bodies behind plausible headers, so parsing gets past the first check."""
    body = st.binary(max_size=400)
    mtype = st.sampled_from([1, 2, 3, 20, 20, 20, 77])

    def build(parts: list[tuple[int, bytes, int]]) -> bytes:
        out = b""
        for t, payload, slack in parts:
            out += HDR.pack(16 + len(payload) + slack % 3, t, 2, 0, 0) + payload
            out += b"\0" * (-len(out) % 4)
        return out

    return st.lists(st.tuples(mtype, body, st.integers(0, 2)), max_size=4).map(build)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(_header_led_bytes())
def test_random_messages_raise_only_kernel_errors(data: bytes) -> None:
    for parse in (netlink.parse_inet_diag, netlink.parse_unix_diag):
        with contextlib.suppress(KernelError):  # anything else fails the test
            parse(data)


@settings(max_examples=300)
@given(st.data())
def test_flipped_bytes_in_a_real_reply_raise_only_kernel_errors(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(["inet_diag_v4.bin", "inet_diag_v6.bin", "unix_diag.bin"]))
    raw = bytearray(fixture(name))
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    parse = netlink.parse_unix_diag if name.startswith("unix") else netlink.parse_inet_diag
    with contextlib.suppress(KernelError):  # anything else fails the test
        parse(bytes(raw))


# -- tcp_info -----------------------------------------------------------------------------


def _tcp_info(length: int) -> bytes:
    full = bytearray(range(1, 105))  # 104 bytes: the size every kernel since 2.6 sends
    struct.pack_into("=B", full, 0, 1)
    struct.pack_into("=II", full, 24, 3, 7)  # unacked, sacked
    struct.pack_into("=I", full, 44, 1500)  # last_data_sent
    struct.pack_into("=I", full, 52, 250)  # last_data_recv
    return bytes(full[:length])


@pytest.mark.parametrize(
    ("length", "expected"),
    [
        (104, netlink.TcpInfo(1, 3, 7, 1500, 250)),
        (56, netlink.TcpInfo(1, 3, 7, 1500, 250)),
        (55, netlink.TcpInfo(1, 3, 7, 1500, None)),
        (48, netlink.TcpInfo(1, 3, 7, 1500, None)),
        (32, netlink.TcpInfo(1, 3, 7, None, None)),
        (28, netlink.TcpInfo(1, 3, None, None, None)),
        (1, netlink.TcpInfo(1, None, None, None, None)),
        (0, netlink.TcpInfo(None, None, None, None, None)),
    ],
)
def test_tcp_info_of_any_length(length: int, expected: netlink.TcpInfo) -> None:
    assert netlink.parse_tcp_info(_tcp_info(length)) == expected
    padded = b"\xee" * 8 + _tcp_info(length) + b"\xee" * 8
    assert netlink.parse_tcp_info(padded, 8, length) == expected


def test_tcp_info_that_overruns_the_buffer_is_a_parse_error() -> None:
    with pytest.raises(KernelParseError, match="tcp_info"):
        netlink.parse_tcp_info(b"\0" * 10, 4, 20)


def _diag_message(info: bytes | None, family: int = 10) -> bytes:
    """One inet_diag reply message for [::1]:8000 <- [::ffff:10.0.0.1]:5555, inode 77."""
    src = socket.inet_pton(socket.AF_INET6, "::1")
    dst = socket.inet_pton(socket.AF_INET6, "::ffff:10.0.0.1")
    body = struct.pack("=BBBB", family, 1, 0, 0) + struct.pack("!HH", 8000, 5555)
    body += src + dst + b"\0" * 12 + struct.pack("=IIIIII", 0, 9, 4, 1000, 77, 0)[:20]
    assert len(body) == 72
    if info is not None:
        attr = struct.pack("=HH", 4 + len(info), netlink.INET_DIAG_INFO) + info
        body += attr + b"\0" * (-len(attr) % 4)
    return HDR.pack(16 + len(body), netlink.SOCK_DIAG_BY_FAMILY, 2, 5, 0) + body


@pytest.mark.parametrize("length", [0, 20, 30, 50, 56, 104, 232])
def test_short_tcp_info_from_older_kernels(length: int) -> None:
    info = _tcp_info(min(length, 104)) + b"\0" * max(0, length - 104)
    (sock,), done = netlink.parse_inet_diag(_diag_message(info))
    assert not done
    expected = netlink.parse_tcp_info(info)
    assert sock.unacked == expected.unacked
    assert sock.last_data_recv_ms == expected.last_data_recv_ms
    assert (sock.local_addr, sock.local_port) == ("::1", 8000)
    assert (sock.peer_addr, sock.peer_port) == ("::ffff:10.0.0.1", 5555)
    assert (sock.rqueue, sock.wqueue, sock.uid, sock.inode) == (9, 4, 1000, 77)


def test_no_tcp_info_leaves_the_fields_unknown() -> None:
    (sock,), _ = netlink.parse_inet_diag(_diag_message(None))
    assert sock.last_data_recv_ms is sock.last_data_sent_ms is sock.unacked is sock.sacked is None


def test_python_side_port_filter() -> None:
    data = fixture("inet_diag_v4.bin")
    facts = MANIFEST["v4"]
    socks, _ = netlink.parse_inet_diag(data, ports={facts["client_port"]})
    assert {(s.local_port, s.peer_port) for s in socks} == {
        (facts["client_port"], facts["listener_port"]),
        (facts["listener_port"], facts["client_port"]),
    }


# -- addresses ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "text"),
    [
        (socket.AF_INET, "127.0.0.1"),
        (socket.AF_INET, "10.1.2.3"),
        (socket.AF_INET6, "::1"),
        (socket.AF_INET6, "2001:db8::8:800:200c:417a"),
        (socket.AF_INET6, "::ffff:192.0.2.1"),
        (socket.AF_INET6, "fe80::1"),
    ],
)
def test_decode_addr(family: int, text: str) -> None:
    packed = socket.inet_pton(family, text)
    raw = packed + b"\0" * (16 - len(packed))
    assert netlink.decode_addr(family, raw) == text
    assert netlink.decode_addr(family, raw) == text  # cached


def test_decode_addr_rejects_other_families() -> None:
    with pytest.raises(KernelParseError):
        netlink.decode_addr(socket.AF_UNIX, b"\0" * 16)


# -- requests -----------------------------------------------------------------------------


def test_inet_diag_request_layout() -> None:
    req = netlink.build_inet_diag_request(socket.AF_INET6, 42)
    length, mtype, flags, seq, pid = HDR.unpack_from(req)
    assert (length, mtype, seq, pid) == (len(req), 20, 42, 0) and len(req) == 16 + 56
    assert flags == netlink.NLM_F_REQUEST | netlink.NLM_F_DUMP
    family, proto, ext, pad, states = struct.unpack_from("=BBBBI", req, 16)
    assert (family, proto, ext, pad) == (socket.AF_INET6, socket.IPPROTO_TCP, 2, 0)
    assert states & (1 << 1) and states & (1 << 10)  # ESTABLISHED, LISTEN
    assert not states & (1 << 6) and not states & (1 << 12)  # TIME_WAIT, NEW_SYN_RECV
    assert req[24:] == b"\0" * 48  # any socket


def test_inet_diag_request_with_port_filter() -> None:
    req = netlink.build_inet_diag_request(socket.AF_INET, 1, ports=[80, 443])
    assert HDR.unpack_from(req)[0] == len(req)
    alen, atype = struct.unpack_from("=HH", req, 72)
    assert atype == netlink.INET_DIAG_REQ_BYTECODE and 72 + alen == len(req)
    assert req[76:] == netlink.build_port_filter([443, 80, 80])


def test_unix_diag_request_layout() -> None:
    req = netlink.build_unix_diag_request(7)
    assert len(req) == 16 + 24 and HDR.unpack_from(req)[:4] == (40, 20, 0x301, 7)
    family, proto, states, ino, show = struct.unpack_from("=BBxxIII", req, 16)
    assert (family, proto, states, ino) == (socket.AF_UNIX, 0, 0xFFFFFFFF, 0)
    assert show == netlink.UDIAG_SHOW_NAME | netlink.UDIAG_SHOW_PEER | netlink.UDIAG_SHOW_RQLEN


OP = struct.Struct("=BBH")


def kernel_audit(bc: bytes) -> bool:
    """Python model of the kernel's inet_diag_bc_audit, for the opcodes we emit."""

    def valid_cc(length: int, cc: int) -> bool:
        pos = 0
        while length >= 0:
            if cc > length:
                return False
            if cc == length:
                return True
            _, yes, _ = OP.unpack_from(bc, pos)
            if yes < 4 or yes & 3:
                return False
            length -= yes
            pos += yes
        return False

    pos, length = 0, len(bc)
    while length > 0:
        code, yes, no = OP.unpack_from(bc, pos)
        min_len = 8 if code in (netlink.INET_DIAG_BC_S_EQ, netlink.INET_DIAG_BC_D_EQ) else 4
        if min_len > length or code not in (1, 11, 12):
            return False
        if no < min_len or no > length + 4 or no & 3:
            return False
        if no < length and not valid_cc(len(bc), length - no):
            return False
        if yes < min_len or yes > length + 4 or yes & 3:
            return False
        pos += yes
        length -= yes
    return length == 0


def kernel_run(bc: bytes, sport: int, dport: int) -> bool:
    """Python model of the kernel's inet_diag_bc_run."""
    pos, length = 0, len(bc)
    while length > 0:
        code, yes, no = OP.unpack_from(bc, pos)
        if code == netlink.INET_DIAG_BC_JMP:
            match = False
        elif code == netlink.INET_DIAG_BC_S_EQ:
            match = sport == OP.unpack_from(bc, pos + 4)[2]
        elif code == netlink.INET_DIAG_BC_D_EQ:
            match = dport == OP.unpack_from(bc, pos + 4)[2]
        else:
            raise AssertionError(code)
        step = yes if match else no
        pos += step
        length -= step
    return length == 0


@given(st.sets(st.integers(0, 65535), max_size=20), st.integers(0, 65535), st.integers(0, 65535))
def test_port_filter_passes_the_kernel_audit_and_matches_local_or_peer(
    ports: set[int], sport: int, dport: int
) -> None:
    bc = netlink.build_port_filter(ports)
    assert kernel_audit(bc)
    assert kernel_run(bc, sport, dport) == (sport in ports or dport in ports)
    for port in ports:
        assert kernel_run(bc, port, dport) and kernel_run(bc, sport, port)


@pytest.mark.parametrize("ports", [[-1], [65536], list(range(3000))])
def test_port_filter_rejects_bad_ports(ports: list[int]) -> None:
    with pytest.raises(ValueError):
        netlink.build_port_filter(ports)


def test_fast_constructor_builds_the_same_frozen_record() -> None:
    values = (10, "LISTEN", "::1", 80, "::", 0, 1, 128, 1000, 4242, None, 7, 1, 128)
    fast = make_tcp_socket(*values)
    assert fast == TcpSocket(*values) and hash(fast) == hash(TcpSocket(*values))
    assert repr(fast) == repr(TcpSocket(*values))
    with pytest.raises(dataclasses.FrozenInstanceError):
        fast.inode = 0  # type: ignore[misc]
    assert [f.name for f in dataclasses.fields(TcpSocket)] == list(
        inspect.signature(make_tcp_socket).parameters
    )
