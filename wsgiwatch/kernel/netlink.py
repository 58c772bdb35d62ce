"""NETLINK_SOCK_DIAG requests and replies (inet_diag for TCP, unix_diag), on bytes.

Everything here except :func:`open_socket` and :func:`dump` is a pure function on bytes, so
the parsers run on captured fixture bytes on any platform.

Byte layouts (from ``linux/netlink.h``, ``sock_diag.h``, ``inet_diag.h``, ``unix_diag.h``,
``tcp.h``). Integers are host-endian unless marked ``be``; no implicit padding anywhere, so
every ``struct`` below uses ``=`` (standard sizes, no alignment)::

    nlmsghdr (16)          0 u32 len (whole message; the next starts at len rounded up to 4)
                           4 u16 type: 20 SOCK_DIAG_BY_FAMILY, 2 NLMSG_ERROR, 3 NLMSG_DONE
                           6 u16 flags   8 u32 seq (echoed)   12 u32 pid (0 = kernel)
    nlattr (4 + payload)   0 u16 len (incl. these 4 bytes)  2 u16 type; next at len rounded to 4
    inet_diag_sockid (48)  0 be16 sport  2 be16 dport  4 be32[4] src  20 be32[4] dst
                           36 u32 ifindex  40 u32[2] cookie      (IPv4 uses 4 of the 16 bytes)
    inet_diag_req_v2 (56)  0 u8 family  1 u8 protocol  2 u8 ext  3 pad  4 u32 states  8 sockid
                           then, optionally, attribute 1 INET_DIAG_REQ_BYTECODE (a filter)
    inet_diag_msg (72)     0 u8 family  1 u8 state  2 u8 timer  3 u8 retrans  4 sockid
                           52 u32 expires  56 u32 rqueue  60 u32 wqueue  64 u32 uid
                           68 u32 inode; then attributes, 2 INET_DIAG_INFO = struct tcp_info
    tcp_info (prefix read) 0 u8 state  24 u32 unacked  28 u32 sacked  44 u32 last_data_sent
                           52 u32 last_data_recv (56 bytes; every kernel since 2.6 sends more)
                           156 u32 data_segs_out (Linux 4.6+; read by skip_quiet only)
    unix_diag_req (24)     0 u8 family  1 u8 protocol  2 pad  4 u32 states  8 u32 ino
                           12 u32 show (UDIAG_SHOW_* bits)  16 u32[2] cookie
    unix_diag_msg (16)     0 u8 family  1 u8 type  2 u8 state  3 pad  4 u32 ino  8 u32[2] cookie
                           then attributes 0 NAME (sun_path bytes), 2 PEER (u32 inode),
                           4 RQLEN (u32 rqueue, u32 wqueue)
    NLMSG_ERROR payload    s32 error (-errno; 0 is an ack), then the offending request header
    NLMSG_DONE payload     s32 status (-errno if the dump failed)

A dump reply is a series of datagrams, each holding whole messages (netlink never splits a
message across datagrams), ending with ``NLMSG_DONE``. The parsers take one datagram at a time.
"""

from __future__ import annotations

import itertools
import os
import socket
import struct
from collections.abc import Callable, Collection
from types import ModuleType
from typing import NamedTuple, TypeVar

from wsgiwatch.kernel.errors import KernelParseError, KernelUnavailable, NetlinkError
from wsgiwatch.kernel.records import TcpSocket, UnixSocket, make_tcp_socket

__all__ = [
    "DEFAULT_TCP_STATES",
    "TCP_STATES",
    "TcpInfo",
    "build_inet_diag_request",
    "build_port_filter",
    "build_tcpdiag_request",
    "build_unix_diag_request",
    "decode_addr",
    "dump",
    "next_seq",
    "open_socket",
    "parse_inet_diag",
    "parse_inet_diag_python",
    "parse_tcp_info",
    "parse_unix_diag",
    "split_messages",
]

Buffer = bytes | bytearray | memoryview
T = TypeVar("T")

NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
#: The older inet_diag request (``struct inet_diag_req``): its dumps cover IPv4 and IPv6 in
#: one walk of the kernel's socket hash, where SOCK_DIAG_BY_FAMILY walks it once per family.
TCPDIAG_GETSOCK = 18
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_DUMP = 0x300  # NLM_F_ROOT | NLM_F_MATCH
INET_DIAG_REQ_BYTECODE = 1
INET_DIAG_INFO = 2
INET_DIAG_BC_JMP = 1
INET_DIAG_BC_S_EQ = 11
INET_DIAG_BC_D_EQ = 12
UNIX_DIAG_NAME = 0
UNIX_DIAG_PEER = 2
UNIX_DIAG_RQLEN = 4
UDIAG_SHOW_NAME = 0x01
UDIAG_SHOW_PEER = 0x04
UDIAG_SHOW_RQLEN = 0x10
MAX_ERRNO = 4095

_NLMSGHDR = struct.Struct("=IHHII")
_NLATTR = struct.Struct("=HH")
_S32 = struct.Struct("=i")
_U32 = struct.Struct("=I")
_U32X2 = struct.Struct("=II")
_BC_OP = struct.Struct("=BBH")
# family, protocol, ext, pad, states; then the 48-byte sockid, all zero: "any socket".
_INET_DIAG_REQ_V2 = struct.Struct("=BBBxI48x")
# inet_diag_req: family, src_len, dst_len, ext, the 48-byte sockid (zero), states, dbs.
_INET_DIAG_REQ = struct.Struct("=BBBB48xII")
# family, state, (timer, retrans, ports), src, dst, (ifindex, cookie, expires), rqueue,
# wqueue, uid, inode. Ports are big-endian, so they are read by _PORTS instead.
_INET_DIAG_MSG = struct.Struct("=BB6x16s16s16xIIII")
_PORTS = struct.Struct("!HH")
# tcp_info: state, then unacked (24), sacked (28), last_data_sent (44), last_data_recv (52).
_TCP_INFO = struct.Struct("=B23xII12xI4xI")
_UNIX_DIAG_REQ = struct.Struct("=BBxxIII8x")
_UNIX_DIAG_MSG = struct.Struct("=BBBxI8x")
assert (
    _INET_DIAG_REQ.size == 60
    and _INET_DIAG_REQ_V2.size == 56
    and _INET_DIAG_MSG.size == 72
    and _TCP_INFO.size == 56
)
assert _UNIX_DIAG_REQ.size == 24 and _UNIX_DIAG_MSG.size == 16

_STATE_NAMES = {
    1: "ESTABLISHED",
    2: "SYN_SENT",
    3: "SYN_RECV",
    4: "FIN_WAIT1",
    5: "FIN_WAIT2",
    6: "TIME_WAIT",
    7: "CLOSE",
    8: "CLOSE_WAIT",
    9: "LAST_ACK",
    10: "LISTEN",
    11: "CLOSING",
    12: "NEW_SYN_RECV",
}
#: Name of every possible state byte, so a lookup never fails on an unexpected value.
TCP_STATES: tuple[str, ...] = tuple(_STATE_NAMES.get(i, f"UNKNOWN_{i}") for i in range(256))
_UNIX_KINDS: tuple[str, ...] = tuple(
    {1: "stream", 2: "dgram", 5: "seqpacket"}.get(i, f"type_{i}") for i in range(256)
)
#: Every state but TIME_WAIT and NEW_SYN_RECV: those are kernel leftovers and half-open
#: requests, held by no process, with no tcp_info; a busy host has thousands of them.
DEFAULT_TCP_STATES = sum(1 << s for s in _STATE_NAMES if s not in (6, 12))

_seq = itertools.count(1)
AF_INET = int(socket.AF_INET)
AF_INET6 = int(socket.AF_INET6)


class TcpInfo(NamedTuple):
    """The fields of ``struct tcp_info`` we use; ``None`` when the kernel's struct is shorter."""

    state: int | None
    unacked: int | None
    sacked: int | None
    last_data_sent_ms: int | None
    last_data_recv_ms: int | None


def _field(buf: Buffer, offset: int, length: int, at: int) -> int | None:
    return _U32.unpack_from(buf, offset + at)[0] if length >= at + 4 else None


def parse_tcp_info(buf: Buffer, offset: int = 0, length: int | None = None) -> TcpInfo:
    """Read the ``struct tcp_info`` of ``length`` bytes at ``offset``; tolerate a short one."""
    if length is None:
        length = len(buf) - offset
    if length < 0 or offset < 0 or offset + length > len(buf):
        raise KernelParseError("tcp_info", f"{length} bytes do not fit the buffer", offset)
    if length >= _TCP_INFO.size:
        state, unacked, sacked, sent, recv = _TCP_INFO.unpack_from(buf, offset)
        return TcpInfo(state, unacked, sacked, sent, recv)
    return TcpInfo(
        buf[offset] if length >= 1 else None,
        _field(buf, offset, length, 24),
        _field(buf, offset, length, 28),
        _field(buf, offset, length, 44),
        _field(buf, offset, length, 52),
    )


_V4_NAMES: dict[bytes, str] = {}
_V6_NAMES: dict[bytes, str] = {}
_NAME_CACHE_MAX = 4096


def decode_addr(family: int, raw: bytes) -> str:
    """Text form of the 16-byte ``idiag_src``/``idiag_dst`` field (IPv4 uses the first 4).

    Results are cached: a server's sockets share a handful of addresses, and ``inet_ntop`` is
    a third of the cost of parsing a socket otherwise.
    """
    if family == socket.AF_INET:
        cache, packed = _V4_NAMES, raw[:4]
    elif family == socket.AF_INET6:
        cache, packed = _V6_NAMES, raw
    else:
        raise KernelParseError("inet_diag_msg", f"address family {family} is not IPv4 or IPv6")
    name = cache.get(raw)
    if name is None:
        name = socket.inet_ntop(family, packed)
        if len(cache) >= _NAME_CACHE_MAX:
            cache.clear()
        cache[raw] = name
    return name


def build_port_filter(ports: Collection[int], *, local_only: bool = False) -> bytes:
    """Bytecode for ``INET_DIAG_REQ_BYTECODE`` keeping sockets whose local or peer port is listed
    (``local_only``: whose local port is: a server's side of its connections, not the
    clients' when they run on the same host).

    ``struct inet_diag_bc_op`` is ``u8 code, u8 yes, u16 no``: the kernel runs ops from the
    start, moving ``yes`` bytes on when an op matches and ``no`` bytes when not; landing
    exactly on the end accepts the socket, jumping past it rejects. ``JMP`` always takes
    ``no``. ``S_EQ``/``D_EQ`` carry the port in the ``no`` field of a second op. The kernel's
    validator only follows ``yes`` links, so every ``no`` target must sit on that chain; per
    port and per side we emit::

        [S_EQ yes=8 no=12] [0 0 port] [JMP yes=4 no=<to the end: accept>]

    and finish with ``[JMP yes=4 no=8]`` (past the end: reject).
    """
    wanted = sorted(set(ports))
    if any(not 0 <= p <= 0xFFFF for p in wanted):
        raise ValueError(f"ports out of range 0..65535: {wanted}")
    codes = (INET_DIAG_BC_S_EQ,) if local_only else (INET_DIAG_BC_S_EQ, INET_DIAG_BC_D_EQ)
    total = 12 * len(codes) * len(wanted) + 4
    if total > 0xFFFF - 4:
        raise ValueError(f"{len(wanted)} ports are too many for one filter")
    parts: list[bytes] = []
    for port in wanted:
        for code in codes:
            jmp_at = 12 * len(parts) + 8
            parts.append(_BC_OP.pack(code, 8, 12))
            parts[-1] += _BC_OP.pack(0, 0, port) + _BC_OP.pack(INET_DIAG_BC_JMP, 4, total - jmp_at)
    parts.append(_BC_OP.pack(INET_DIAG_BC_JMP, 4, 8))
    return b"".join(parts)


def build_inet_diag_request(
    family: int,
    seq: int,
    *,
    states: int = DEFAULT_TCP_STATES,
    ports: Collection[int] | None = None,
    local_only: bool = False,
) -> bytes:
    """A ``SOCK_DIAG_BY_FAMILY`` dump request for TCP sockets of one family, with tcp_info.

    With ``ports``, the kernel itself drops the other sockets (see :func:`build_port_filter`).
    """
    body = _INET_DIAG_REQ_V2.pack(family, socket.IPPROTO_TCP, 1 << (INET_DIAG_INFO - 1), states)
    if ports is not None:
        bytecode = (
            build_port_filter(ports, local_only=True) if local_only else build_port_filter(ports)
        )
        body += _NLATTR.pack(4 + len(bytecode), INET_DIAG_REQ_BYTECODE) + bytecode
    header = _NLMSGHDR.pack(16 + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
    return header + body


def build_tcpdiag_request(
    seq: int,
    *,
    states: int = DEFAULT_TCP_STATES,
    ports: Collection[int] | None = None,
    local_only: bool = False,
) -> bytes:
    """A ``TCPDIAG_GETSOCK`` dump request: TCP sockets of both families, with tcp_info.

    The kernel walks its whole established-socket hash for every dump that asks for any
    state but LISTEN: about a millisecond for 262,144 buckets here, however few sockets
    match. This request's dump covers IPv4 and IPv6 in one walk, half the cost of one
    ``SOCK_DIAG_BY_FAMILY`` dump per family. Replies are the same ``inet_diag_msg``.
    """
    body = _INET_DIAG_REQ.pack(socket.AF_INET, 0, 0, 1 << (INET_DIAG_INFO - 1), states, 0)
    if ports is not None:
        bytecode = (
            build_port_filter(ports, local_only=True) if local_only else build_port_filter(ports)
        )
        body += _NLATTR.pack(4 + len(bytecode), INET_DIAG_REQ_BYTECODE) + bytecode
    header = _NLMSGHDR.pack(16 + len(body), TCPDIAG_GETSOCK, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
    return header + body


def build_unix_diag_request(
    seq: int,
    *,
    states: int = 0xFFFFFFFF,
    show: int = UDIAG_SHOW_NAME | UDIAG_SHOW_PEER | UDIAG_SHOW_RQLEN,
) -> bytes:
    """A ``SOCK_DIAG_BY_FAMILY`` dump request for unix sockets with name, peer and queues."""
    body = _UNIX_DIAG_REQ.pack(socket.AF_UNIX, 0, states, 0, show)
    header = _NLMSGHDR.pack(16 + len(body), SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, seq, 0)
    return header + body


def _errno_of(status: int, what: str, offset: int) -> int:
    if not -MAX_ERRNO <= status < 0:
        raise KernelParseError(what, f"status {status} is not a negative errno", offset)
    return -status


def split_messages(
    buf: Buffer, end: int | None = None, seq: int | None = None
) -> tuple[list[tuple[int, int]], bool]:
    """Payload spans ``(start, stop)`` of the ``SOCK_DIAG_BY_FAMILY`` messages in one datagram.

    Returns ``(spans, done)``; ``done`` is true once ``NLMSG_DONE`` was seen (what follows it
    is ignored). Messages whose sequence number is not ``seq`` (replies to an earlier,
    abandoned request) are skipped. Raises :class:`NetlinkError` for ``NLMSG_ERROR``.
    """
    if end is None:
        end = len(buf)
    spans: list[tuple[int, int]] = []
    append = spans.append
    unpack_header = _NLMSGHDR.unpack_from
    off = 0
    while off < end:
        if end - off < 16:
            raise KernelParseError("nlmsghdr", f"{end - off} bytes left, need 16", off)
        length, mtype, _flags, mseq, _pid = unpack_header(buf, off)
        if length < 16 or length > end - off:
            raise KernelParseError("nlmsghdr", f"nlmsg_len {length}, {end - off} bytes left", off)
        if seq is None or mseq == seq:
            if mtype in (SOCK_DIAG_BY_FAMILY, TCPDIAG_GETSOCK):
                append((off + 16, off + length))
            elif mtype == NLMSG_DONE:
                if length >= 20:
                    status = _S32.unpack_from(buf, off + 16)[0]
                    if status:
                        raise NetlinkError(_errno_of(status, "NLMSG_DONE", off), "sock_diag dump")
                return spans, True
            elif mtype == NLMSG_ERROR:
                if length < 20:
                    raise KernelParseError("nlmsgerr", f"nlmsg_len {length}, need 20", off)
                status = _S32.unpack_from(buf, off + 16)[0]
                if status:  # 0 is an ack, which a dump does not send, but is harmless
                    raise NetlinkError(_errno_of(status, "nlmsgerr", off), "sock_diag request")
            # NLMSG_NOOP and types we do not know carry nothing for us.
        off += (length + 3) & ~3
    return spans, False


def _attr_bad(what: str, alen: int, a: int, stop: int) -> KernelParseError:
    return KernelParseError(what, f"nla_len {alen}, {stop - a} bytes left in the message", a)


def parse_inet_diag(
    buf: Buffer,
    end: int | None = None,
    *,
    seq: int | None = None,
    ports: Collection[int] | None = None,
    local_only: bool = False,
    skip_quiet: bool = False,
) -> tuple[list[TcpSocket], bool]:
    """Parse one datagram of an inet_diag dump reply into :class:`TcpSocket` records.

    ``ports`` keeps only sockets whose local (``local_only``) or peer port is listed (for
    kernels that refuse the bytecode filter). ``skip_quiet`` leaves out the connections no
    request can be waiting on: established, held by a process, nothing unread, and data
    sent more recently than received (a kept-alive connection between requests).
    Returns ``(sockets, done)``.

    Runs in C (:data:`accelerator`) when it is built: with 10,000 idle connections on a
    listener the Python loop costs about 10 us per message, skipped or not. The C parser
    takes plain byte buffers, a u32 ``seq`` and integer ports; anything else, and every
    call when it is missing, goes to :func:`parse_inet_diag_python`, the reference it
    matches record for record and error for error (tests/kernel/test_diag_accel.py).
    """
    fast = accelerator
    if fast is not None and (type(buf) is bytearray or type(buf) is bytes):
        stop = len(buf) if end is None else end
        bitmap = None if ports is None else _port_bitmap(ports)
        if (
            0 <= stop <= len(buf)
            and (seq is None or (type(seq) is int and 0 <= seq <= 0xFFFFFFFF))
            and (ports is None or bitmap is not None)
        ):
            result: tuple[list[TcpSocket], bool] = fast.parse_inet_diag(
                buf, stop, seq, bitmap, local_only, skip_quiet
            )
            return result
    return parse_inet_diag_python(
        buf, end, seq=seq, ports=ports, local_only=local_only, skip_quiet=skip_quiet
    )


_BITMAPS: dict[frozenset[int], bytes] = {}


def _port_bitmap(ports: Collection[int]) -> bytes | None:
    """A bit per port (8 KiB) for the C parser; None if ``ports`` holds other than ints."""
    key = ports if isinstance(ports, frozenset) else frozenset(ports)
    bitmap = _BITMAPS.get(key)
    if bitmap is None:
        if not all(type(p) is int for p in key):
            return None
        bits = bytearray(8192)
        for port in key:
            if 0 <= port <= 0xFFFF:
                bits[port >> 3] |= 1 << (port & 7)
        if len(_BITMAPS) >= 16:
            _BITMAPS.clear()
        bitmap = _BITMAPS[key] = bytes(bits)
    return bitmap


def parse_inet_diag_python(
    buf: Buffer,
    end: int | None = None,
    *,
    seq: int | None = None,
    ports: Collection[int] | None = None,
    local_only: bool = False,
    skip_quiet: bool = False,
) -> tuple[list[TcpSocket], bool]:
    """:func:`parse_inet_diag` in Python: the reference, and the fallback without C."""
    spans, done = split_messages(buf, end, seq)
    out: list[TcpSocket] = []
    append = out.append
    unpack_msg = _INET_DIAG_MSG.unpack_from
    unpack_ports = _PORTS.unpack_from
    unpack_attr = _NLATTR.unpack_from
    states = TCP_STATES
    v4, v6 = _V4_NAMES, _V6_NAMES
    for start, stop in spans:
        if stop - start < 72:
            raise KernelParseError("inet_diag_msg", f"{stop - start} bytes, need 72", start)
        family, state, src, dst, rqueue, wqueue, uid, inode = unpack_msg(buf, start)
        sport, dport = unpack_ports(buf, start + 4)
        if ports is not None and sport not in ports and (local_only or dport not in ports):
            continue
        info_at = info_len = -1
        a = start + 72
        while a + 4 <= stop:
            alen, atype = unpack_attr(buf, a)
            if alen < 4 or alen > stop - a:
                raise _attr_bad("inet_diag attribute", alen, a, stop)
            if atype == INET_DIAG_INFO:
                info_at, info_len = a + 4, alen - 4
            a += (alen + 3) & ~3
        # The wire carries Linux's AF_INET (2) / AF_INET6 (10); records carry the host's
        # constants, so fixtures parse the same on any platform.
        if family == 2:
            family = AF_INET
            local = v4.get(src) or decode_addr(AF_INET, src)
            peer = v4.get(dst) or decode_addr(AF_INET, dst)
        elif family == 10:
            family = AF_INET6
            local = v6.get(src) or decode_addr(AF_INET6, src)
            peer = v6.get(dst) or decode_addr(AF_INET6, dst)
        else:
            raise KernelParseError("inet_diag_msg", f"address family {family}", start)
        if info_len >= 56:
            _, unacked, sacked, sent, recv = _TCP_INFO.unpack_from(buf, info_at)
        elif info_len >= 0:
            _, unacked, sacked, sent, recv = parse_tcp_info(buf, info_at, info_len)
        else:
            unacked = sacked = sent = recv = None
        if (
            skip_quiet
            and state == 1
            and inode
            and not rqueue
            and recv is not None
            and sent is not None
            and (
                recv > sent
                # Asked and answered within one jiffy (a fast request): quiet too if it
                # has sent data (a fresh connection's first request has not).
                or (recv == sent and info_len >= 160 and _U32.unpack_from(buf, info_at + 156)[0])
            )
        ):
            continue
        append(
            make_tcp_socket(
                family,
                states[state],
                local,
                sport,
                peer,
                dport,
                rqueue,
                wqueue,
                uid,
                inode,
                recv,
                sent,
                unacked,
                sacked,
            )
        )
    return out, done


def _unix_name(raw: bytes) -> str:
    if raw[:1] == b"\0":  # abstract namespace: any bytes; shown like ss does
        return "@" + raw[1:].replace(b"\0", b"@").decode("utf-8", "surrogateescape")
    path = raw.split(b"\0", 1)[0]  # the kernel keeps the path's terminating NUL
    return path.decode("utf-8", "surrogateescape")


def parse_unix_diag(
    buf: Buffer, end: int | None = None, *, seq: int | None = None
) -> tuple[list[UnixSocket], bool]:
    """Parse one datagram of a unix_diag dump reply into :class:`UnixSocket` records."""
    spans, done = split_messages(buf, end, seq)
    out: list[UnixSocket] = []
    append = out.append
    unpack_attr = _NLATTR.unpack_from
    states = TCP_STATES
    for start, stop in spans:
        if stop - start < 16:
            raise KernelParseError("unix_diag_msg", f"{stop - start} bytes, need 16", start)
        _family, kind, state, inode = _UNIX_DIAG_MSG.unpack_from(buf, start)
        path: str | None = None
        peer: int | None = None
        rqueue = wqueue = 0
        a = start + 16
        while a + 4 <= stop:
            alen, atype = unpack_attr(buf, a)
            if alen < 4 or alen > stop - a:
                raise _attr_bad("unix_diag attribute", alen, a, stop)
            if atype == UNIX_DIAG_NAME:
                path = _unix_name(bytes(buf[a + 4 : a + alen]))
            elif atype == UNIX_DIAG_PEER:
                if alen < 8:
                    raise KernelParseError("UNIX_DIAG_PEER", f"nla_len {alen}, need 8", a)
                peer = _U32.unpack_from(buf, a + 4)[0]
            elif atype == UNIX_DIAG_RQLEN:
                if alen < 12:
                    raise KernelParseError("UNIX_DIAG_RQLEN", f"nla_len {alen}, need 12", a)
                rqueue, wqueue = _U32X2.unpack_from(buf, a + 4)
            a += (alen + 3) & ~3
        append(UnixSocket(states[state], path, inode, peer, rqueue, wqueue, _UNIX_KINDS[kind]))
    return out, done


def open_socket() -> socket.socket:
    """A NETLINK_SOCK_DIAG socket, or :class:`KernelUnavailable` saying why not."""
    family = getattr(socket, "AF_NETLINK", None)
    if family is None:
        raise KernelUnavailable("this platform has no AF_NETLINK sockets")
    try:
        return socket.socket(family, socket.SOCK_RAW, NETLINK_SOCK_DIAG)
    except OSError as exc:  # seccomp, an LSM, or a kernel built without sock_diag
        raise KernelUnavailable(f"NETLINK_SOCK_DIAG socket refused: {exc}") from exc


#: A dump datagram holds at most 32 KiB (the kernel caps its allocation there).
RECV_BUFFER_SIZE = 65536


def dump(
    sock: socket.socket,
    request: bytes,
    seq: int,
    parse: Callable[..., tuple[list[T], bool]],
    **parse_kwargs: object,
) -> list[T]:
    """Send one dump ``request`` (built with ``seq``) and parse every reply datagram."""
    sock.sendto(request, (0, 0))
    buf = bytearray(RECV_BUFFER_SIZE)
    out: list[T] = []
    while True:
        # MSG_TRUNC makes netlink return the datagram's full length, so a datagram that did
        # not fit is detected instead of parsed as a clipped one.
        n = sock.recv_into(buf, RECV_BUFFER_SIZE, socket.MSG_TRUNC)
        if n > RECV_BUFFER_SIZE:
            raise KernelParseError("netlink datagram", f"{n} bytes overflow the buffer", 0)
        items, done = parse(buf, n, seq=seq, **parse_kwargs)
        out.extend(items)
        if done:
            return out


def _load_accelerator() -> ModuleType | None:
    if os.environ.get("WSGIWATCH_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from wsgiwatch.kernel import _diag
    except ImportError:  # built without a C compiler: the Python parser does it all
        return None
    _diag.configure(make_tcp_socket, TCP_STATES, KernelParseError, NetlinkError)
    return _diag


#: The C parser (wsgiwatch/kernel/_diag.c), or None: :func:`parse_inet_diag` then runs in
#: Python. Set it to None to force the Python parser (benchmarks/sidecar_scale.py compares).
accelerator: ModuleType | None = _load_accelerator()


def next_seq() -> int:
    """A fresh netlink sequence number for this process."""
    return next(_seq) & 0xFFFFFFFF
