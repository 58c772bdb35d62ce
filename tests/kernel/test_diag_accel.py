"""The C inet_diag parser (wsgiwatch.kernel._diag) against the Python one it stands in for.

``netlink.parse_inet_diag_python`` is the reference. Every case here runs both on the same
bytes and requires the same outcome: equal records and the same ``done``, or an exception of
the same class with the same message, structure, offset and errno. The bytes are recorded
dumps, live dumps of real sockets, generated messages (every tcp_info length, every
skip_quiet corner) and hostile bytes.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
from collections.abc import Callable, Collection
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsgiwatch.kernel import netlink
from wsgiwatch.kernel.errors import KernelError, NetlinkError

FIXTURES = Path(__file__).parent / "fixtures"
HDR = struct.Struct("=IHHII")
FIXTURE_NAMES = ["inet_diag_v4.bin", "inet_diag_v6.bin", "nlmsg_error_einval.bin"]


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


def c_parser() -> Any:
    accel = netlink.accelerator
    assert accel is not None, (
        "wsgiwatch.kernel._diag is not built (pip install -e . with a C compiler)"
    )
    return accel


def outcome(parse: Callable[[], object]) -> tuple[str, object]:
    try:
        return "ok", parse()
    except KernelError as exc:
        detail: object = (
            (exc.errno, exc.strerror)
            if isinstance(exc, NetlinkError)
            else (
                getattr(exc, "what", None),
                getattr(exc, "offset", None),
                getattr(exc, "detail", None),
            )
        )
        return type(exc).__name__, (str(exc), detail)


def same_both_ways(buf: bytes | bytearray, end: int | None = None, **kwargs: Any) -> object:
    """Parse with C and with Python; assert the same outcome; return it."""
    c_parser()
    via_c = outcome(lambda: netlink.parse_inet_diag(buf, end, **kwargs))
    via_python = outcome(lambda: netlink.parse_inet_diag_python(buf, end, **kwargs))
    assert via_c == via_python
    return via_c


def test_the_accelerator_is_built_and_used() -> None:
    data = fixture("inet_diag_v4.bin")
    calls: list[int] = []
    real = c_parser().parse_inet_diag

    def counting(*args: Any) -> Any:
        calls.append(1)
        return real(*args)

    accel = c_parser()
    try:
        netlink.accelerator = type("Spy", (), {"parse_inet_diag": staticmethod(counting)})()
        socks, done = netlink.parse_inet_diag(data, ports={8000, 1})
    finally:
        netlink.accelerator = accel
    assert calls == [1] and done
    assert (socks, done) == netlink.parse_inet_diag_python(data, ports={8000, 1})


def test_pure_python_in_the_environment_turns_it_off() -> None:
    check = "from wsgiwatch.kernel import netlink; print(netlink.accelerator is None)"
    for value, off in (("1", "True"), ("0", "False"), ("", "False")):
        env = {**os.environ, "WSGIWATCH_PURE_PYTHON": value}
        result = subprocess.run(
            [sys.executable, "-c", check], env=env, capture_output=True, text=True, check=True
        )
        assert result.stdout.strip() == off


# -- recorded replies, every option ------------------------------------------------------


def _ports_of(data: bytes) -> list[int]:
    socks, _ = netlink.parse_inet_diag_python(data)
    return sorted({s.local_port for s in socks} | {s.peer_port for s in socks})


@pytest.mark.parametrize("name", FIXTURE_NAMES)
@pytest.mark.parametrize("local_only", [False, True])
@pytest.mark.parametrize("skip_quiet", [False, True])
def test_recorded_dumps_every_option(name: str, local_only: bool, skip_quiet: bool) -> None:
    data = fixture(name)
    (seq,) = {HDR.unpack_from(data, 0)[3]}
    ports = _ports_of(data) if "error" not in name else [80]
    port_sets: list[Collection[int] | None] = [None, set(), {ports[0]}, frozenset(ports[1:]), ports]
    for wanted in port_sets:
        for s in (None, seq, seq + 1, 0, 0xFFFFFFFF):
            same_both_ways(data, seq=s, ports=wanted, local_only=local_only, skip_quiet=skip_quiet)


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_every_truncation_and_end(name: str) -> None:
    data = fixture(name)
    for cut in range(len(data) + 1):
        same_both_ways(data[:cut])
        same_both_ways(bytearray(data), cut, skip_quiet=True)


def test_arguments_the_c_parser_does_not_take_go_to_python() -> None:
    data = fixture("inet_diag_v6.bin")
    expected = netlink.parse_inet_diag_python(data)
    assert netlink.parse_inet_diag(memoryview(data)) == expected
    assert netlink.parse_inet_diag(data, seq=1 << 40) == ([], False)
    assert netlink.parse_inet_diag(data, seq=-1) == ([], False)
    ports = _ports_of(data)
    assert netlink.parse_inet_diag(data, ports=[str(p) for p in ports]) == ([], True)
    # end past the buffer: whatever the Python parser does (here, a clean parse error)
    assert same_both_ways(data[:40], 200)[0] == "KernelParseError"


# -- generated messages: tcp_info of every length, the skip_quiet rules ------------------


def _message(fields: dict[str, Any]) -> bytes:
    """One SOCK_DIAG_BY_FAMILY message with an inet_diag_msg and the given attributes."""
    body = struct.pack("=BBBB", fields["family"], fields["state"], 0, 0)
    body += struct.pack("!HH", fields["sport"], fields["dport"])
    body += fields["src"] + fields["dst"] + b"\0" * 16
    body += struct.pack("=IIII", fields["rqueue"], 0, fields["uid"], fields["inode"])
    for atype, payload in fields["attrs"]:
        body += struct.pack("=HH", 4 + len(payload), atype) + payload
        body += b"\0" * (-len(body) % 4)
    return HDR.pack(16 + len(body), fields["mtype"], 2, fields["seq"], 0) + body


def _tcp_info() -> st.SearchStrategy[bytes]:
    """tcp_info of any length, with last_data_recv/sent and data_segs_out often equal or 0."""
    small = st.sampled_from([0, 1, 4, 5])

    def build(parts: tuple[int, bytes, int, int, int]) -> bytes:
        length, noise, recv, sent, segs = parts
        raw = bytearray(noise.ljust(232, b"\x01"))
        struct.pack_into("=II", raw, 44, sent, 0)
        struct.pack_into("=I", raw, 52, recv)
        struct.pack_into("=I", raw, 156, segs)
        return bytes(raw[:length])

    length = st.one_of(st.integers(0, 232), st.sampled_from([0, 55, 56, 159, 160, 232]))
    return st.tuples(length, st.binary(max_size=232), small, small, st.sampled_from([0, 3])).map(
        build
    )


def _messages() -> st.SearchStrategy[bytes]:
    address = st.one_of(st.binary(min_size=16, max_size=16), st.just(b"\x7f\0\0\x01" + b"\0" * 12))
    attr = st.one_of(
        st.tuples(st.just(2), _tcp_info()),
        st.tuples(st.sampled_from([1, 5, 8, 0x8002]), st.binary(max_size=12)),
    )
    fields = st.fixed_dictionaries(
        {
            "family": st.sampled_from([2, 2, 10, 10, 7]),
            "state": st.one_of(st.just(1), st.integers(0, 255)),
            "sport": st.sampled_from([80, 8000, 40000]),
            "dport": st.sampled_from([80, 8000, 40000]),
            "src": address,
            "dst": address,
            "rqueue": st.sampled_from([0, 0, 5]),
            "uid": st.integers(0, 2**32 - 1),
            "inode": st.sampled_from([0, 12345, 2**32 - 1]),
            "attrs": st.lists(attr, max_size=3),
            "mtype": st.sampled_from([20, 20, 18, 1, 77]),
            "seq": st.sampled_from([7, 7, 8]),
        }
    )
    done = st.sampled_from([b"", HDR.pack(20, 3, 2, 7, 0) + b"\0" * 4, HDR.pack(16, 3, 2, 8, 0)])
    return st.tuples(st.lists(fields.map(_message), max_size=5), done).map(
        lambda parts: b"".join(parts[0]) + parts[1]
    )


def test_every_tcp_info_length_and_quiet_rule() -> None:
    """A grid, not a sample: every tcp_info length 0..232 (the fields appear at 28, 32, 48,
    56 bytes, data_segs_out at 160) against every input of the skip_quiet rule."""
    base = {"family": 2, "sport": 80, "dport": 40000, "src": bytes(16), "dst": bytes(16)}
    base |= {"uid": 0, "mtype": 20, "seq": 7}
    for length in range(233):
        messages = []
        for state in (1, 2):
            for inode in (0, 9):
                for rqueue in (0, 1):
                    for recv, sent in ((0, 0), (1, 0), (0, 1), (5, 5)):
                        for segs in (0, 3, 1 << 24):
                            raw = bytearray(range(232))
                            struct.pack_into("=I", raw, 44, sent)
                            struct.pack_into("=I", raw, 52, recv)
                            struct.pack_into("=I", raw, 156, segs)
                            attrs = [(2, bytes(raw[:length]))]
                            fields = base | {"state": state, "inode": inode, "rqueue": rqueue}
                            messages.append(_message(fields | {"attrs": attrs}))
        data = b"".join(messages)
        for skip_quiet in (False, True):
            assert same_both_ways(data, skip_quiet=skip_quiet)[0] == "ok"


options = st.fixed_dictionaries(
    {
        "seq": st.sampled_from([None, 7, 8]),
        "ports": st.sampled_from([None, {80}, frozenset({8000, 40000}), [40000], set()]),
        "local_only": st.booleans(),
        "skip_quiet": st.booleans(),
    }
)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(_messages(), options)
def test_generated_messages(data: bytes, kwargs: dict[str, Any]) -> None:
    same_both_ways(data, **kwargs)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(_messages(), st.data())
def test_generated_messages_with_corrupt_lengths(data: bytes, draw: st.DataObject) -> None:
    raw = bytearray(data + b"\0" * 4)
    for _ in range(draw.draw(st.integers(1, 3))):
        at = draw.draw(st.integers(0, len(raw) - 2))
        raw[at : at + 2] = struct.pack(
            "=H", draw.draw(st.sampled_from([0, 2, 3, 4, 16, 72, 0xFFFF]))
        )
    same_both_ways(bytes(raw), skip_quiet=draw.draw(st.booleans()))


# -- hostile bytes ---------------------------------------------------------------------


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600), options)
def test_random_bytes(data: bytes, kwargs: dict[str, Any]) -> None:
    same_both_ways(data, **kwargs)


def _status_messages() -> st.SearchStrategy[bytes]:
    status = st.one_of(
        st.integers(-(2**31), 2**31 - 1), st.sampled_from([0, -1, -22, -4095, -4096, 1])
    )
    message = st.tuples(st.sampled_from([2, 3]), status, st.sampled_from([16, 19, 20, 36])).map(
        lambda t: (
            HDR.pack(t[2], t[0], 0, 7, 0)
            + struct.pack("=i", t[1])
            + b"\0" * (t[2] - 20 if t[2] > 20 else 0)
        )
    )
    return st.lists(message, min_size=1, max_size=3).map(b"".join)


@settings(max_examples=300)
@given(_status_messages(), st.sampled_from([None, 7, 8]))
def test_error_and_done_statuses(data: bytes, seq: int | None) -> None:
    outcome_ = same_both_ways(data, seq=seq)
    assert outcome_[0] in ("ok", "NetlinkError", "KernelParseError")


@settings(max_examples=400)
@given(st.data())
def test_flipped_bytes_in_a_recorded_reply(data: st.DataObject) -> None:
    raw = bytearray(fixture(data.draw(st.sampled_from(FIXTURE_NAMES[:2]))))
    for _ in range(data.draw(st.integers(1, 8))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    same_both_ways(
        bytes(raw),
        skip_quiet=data.draw(st.booleans()),
        ports=data.draw(st.sampled_from([None, {1, 2}])),
    )


# -- live dumps of real sockets ----------------------------------------------------------


def _raw_dump(request_for: Callable[[int], bytes]) -> tuple[list[bytes], int]:
    """The datagrams of one real dump, unparsed."""
    seq = netlink.next_seq()
    with netlink.open_socket() as sock:
        sock.sendto(request_for(seq), (0, 0))
        datagrams = []
        while True:
            data = sock.recv(netlink.RECV_BUFFER_SIZE)
            datagrams.append(data)
            _, done = netlink.parse_inet_diag_python(data, seq=seq)
            if done:
                return datagrams, seq


def test_live_dumps_parse_the_same() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    clients = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
    accepted = [listener.accept()[0] for _ in range(30)]  # 10 left in the backlog
    try:
        for c in clients[:10]:
            c.sendall(b"GET / HTTP/1.1\r\n\r\n")  # unread on the server side: not quiet
        for a in accepted[10:20]:
            a.sendall(b"reply")  # sent after the client's last data: quiet when kept alive
        requests = [
            lambda seq: netlink.build_tcpdiag_request(seq),
            lambda seq: netlink.build_tcpdiag_request(seq, ports={port}, local_only=True),
            lambda seq: netlink.build_inet_diag_request(socket.AF_INET, seq, ports={port}),
        ]
        for request_for in requests:
            datagrams, seq = _raw_dump(request_for)
            kept = 0
            for data in datagrams:
                for kwargs in ({}, {"skip_quiet": True}, {"ports": {port}, "local_only": True}):
                    result = same_both_ways(bytearray(data), seq=seq, **kwargs)
                    assert result[0] == "ok"
                    if not kwargs:
                        kept += len(result[1][0])  # type: ignore[index]
            assert kept >= 41  # the listener and its 40 connections' server ends, at least
    finally:
        for s in [listener, *clients, *accepted]:
            s.close()
