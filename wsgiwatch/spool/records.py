"""What a spool holds, as values: the header, finished-request records, busy slots and accept
events, and their decoding from the bytes :mod:`wsgiwatch.spool.layout` defines.

Decoding here is pure (bytes in, value out); which bytes to trust, and when, is the reader's
job (:mod:`wsgiwatch.spool.reader`). Also :func:`queue_wait_ns`, the one definition of queue
wait, and :func:`make_record`, the fast ``Record(...)`` the reader builds records with.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from wsgiwatch.spool import layout as fmt

__all__ = [
    "AcceptEvent",
    "Record",
    "SlotState",
    "SpoolHeader",
    "decode_accept",
    "decode_header",
    "decode_record",
    "decode_slot",
    "make_record",
    "queue_wait_ns",
]


def queue_wait_ns(entry_ns: int, ready_ns: int) -> int:
    """Queue wait as DESIGN.md defines it: entry - max(accept, arrival), where ``ready_ns``
    is that max, from whichever source knows it. Never negative: clocks of different
    sources may disagree by a jiffy."""
    return max(0, entry_ns - ready_ns)


@dataclass(frozen=True, slots=True)
class SpoolHeader:
    pid: int
    start_ticks: int
    created_wall_ns: int
    created_mono_ns: int
    slot_count: int
    ring_capacity: int
    accept_capacity: int
    declared_capacity: int
    ppid: int
    flags: int
    slot_high_water: int
    ring_head: int
    accept_head: int
    slots_exhausted: int
    write_errors: int
    reader_cursor: int
    reader_lost: int
    server_software: str
    # What the worker lost or refused before anything reached this file (the worker keeps
    # these per process and writes them into each new spool it makes).
    times_rejected: int = 0  # accept or proxy times refused as implausible
    spools_lost: int = 0  # earlier spools removed or truncated under it
    records_lost_with_spool: int = 0  # records unread in those

    @property
    def accept_hook(self) -> bool:
        return bool(self.flags & fmt.HEADER_FLAG_ACCEPT_HOOK)

    @property
    def cooperative(self) -> bool:
        """Requests run as greenlets in one thread (gevent, eventlet monkey-patching)."""
        return bool(self.flags & fmt.HEADER_FLAG_COOPERATIVE)

    @property
    def accelerated(self) -> bool:
        """The worker records through the C accelerator (else in pure Python, slower)."""
        return bool(self.flags & fmt.HEADER_FLAG_ACCELERATED)

    @property
    def capacity(self) -> int:
        """Requests the process can run at once: declared, else the most seen at once."""
        return self.declared_capacity or max(1, self.slot_high_water)


@dataclass(frozen=True, slots=True)
class Record:
    """One finished request. Times are CLOCK_MONOTONIC ns; 0 means unknown."""

    seq: int
    pid: int
    request: int  # the process's request number, also shown on the scoreboard meanwhile
    accept_ns: int
    arrival_ns: int
    entry_ns: int
    headers_ns: int
    exit_ns: int
    proxy_wall_ns: int
    bytes_sent: int
    tid: int
    slot: int
    status: int
    flags: int
    peer_port: int
    server_port: int
    method: str
    accept_source: str
    peer: str
    route: str

    @property
    def duration_ns(self) -> int:
        return self.exit_ns - self.entry_ns

    @property
    def ready_ns(self) -> int:
        """max(accept, arrival): since when the request could have been served, or 0. On a
        kept-alive connection the accept was for an earlier request: only arrival counts."""
        if self.flags & fmt.FLAG_REUSED_CONNECTION:
            return self.arrival_ns
        return max(self.accept_ns, self.arrival_ns)

    @property
    def queue_wait_ns(self) -> int | None:
        """entry - max(accept, arrival), when either is known from the worker itself."""
        ready = self.ready_ns
        return queue_wait_ns(self.entry_ns, ready) if ready else None

    @property
    def reused_connection(self) -> bool:
        return bool(self.flags & fmt.FLAG_REUSED_CONNECTION)


@dataclass(frozen=True, slots=True)
class SlotState:
    """A busy scoreboard slot: a request running now."""

    index: int
    request: int
    entry_ns: int
    accept_ns: int
    arrival_ns: int
    tid: int
    peer_port: int
    method: str
    accept_source: str
    peer: str
    path: str


@dataclass(frozen=True, slots=True)
class AcceptEvent:
    seq: int
    accept_ns: int
    arrival_ns: int
    peer_port: int
    server_port: int
    peer: str


# The sidecar builds one Record per finished request. A frozen dataclass's __init__ sets each
# of its 20 fields through object.__setattr__, which resolves the slot by name every time
# (about 4 us a record here, a third of the sidecar's whole per-request cost); calling the
# slot descriptors directly is a quarter of that. Same object, as immutable afterwards:
# tests check it equals Record(...) field for field (as kernel/records.py does for sockets).
(
    _set_seq,
    _set_pid,
    _set_request,
    _set_accept_ns,
    _set_arrival_ns,
    _set_entry_ns,
    _set_headers_ns,
    _set_exit_ns,
    _set_proxy_wall_ns,
    _set_bytes_sent,
    _set_tid,
    _set_slot,
    _set_status,
    _set_flags,
    _set_peer_port,
    _set_server_port,
    _set_method,
    _set_accept_source,
    _set_peer,
    _set_route,
) = (getattr(Record, field.name).__set__ for field in dataclasses.fields(Record))
_new = object.__new__


def make_record(
    seq: int,
    pid: int,
    request: int,
    accept_ns: int,
    arrival_ns: int,
    entry_ns: int,
    headers_ns: int,
    exit_ns: int,
    proxy_wall_ns: int,
    bytes_sent: int,
    tid: int,
    slot: int,
    status: int,
    flags: int,
    peer_port: int,
    server_port: int,
    method: str,
    accept_source: str,
    peer: str,
    route: str,
) -> Record:
    """``Record(...)`` with the same arguments, in a quarter of the time (for the reader)."""
    record: Record = _new(Record)
    _set_seq(record, seq)
    _set_pid(record, pid)
    _set_request(record, request)
    _set_accept_ns(record, accept_ns)
    _set_arrival_ns(record, arrival_ns)
    _set_entry_ns(record, entry_ns)
    _set_headers_ns(record, headers_ns)
    _set_exit_ns(record, exit_ns)
    _set_proxy_wall_ns(record, proxy_wall_ns)
    _set_bytes_sent(record, bytes_sent)
    _set_tid(record, tid)
    _set_slot(record, slot)
    _set_status(record, status)
    _set_flags(record, flags)
    _set_peer_port(record, peer_port)
    _set_server_port(record, server_port)
    _set_method(record, method)
    _set_accept_source(record, accept_source)
    _set_peer(record, peer)
    _set_route(record, route)
    return record


def _text(raw: bytes, encoding: str = "utf-8") -> str:
    return raw.rstrip(b"\0").decode(encoding, "replace")


def _method(code: int) -> str:
    return fmt.METHODS[code] if code < len(fmt.METHODS) else "OTHER"


def _source(code: int) -> str:
    return fmt.ACCEPT_SOURCES[code] if code < len(fmt.ACCEPT_SOURCES) else "unknown"


def decode_header(raw: bytes) -> SpoolHeader:
    """The header from its ``fmt.HEADER_SIZE`` bytes (as they are: nothing is checked)."""
    (
        _magic,
        _v,
        _hs,
        pid,
        ticks,
        wall,
        mono,
        slots,
        _ss,
        ring,
        _rs,
        accepts,
        _as,
        cap,
        ppid,
    ) = fmt.HEADER_IDENTITY.unpack_from(raw, 0)
    u64 = fmt.U64.unpack_from
    u32 = fmt.U32.unpack_from
    return SpoolHeader(
        pid=pid,
        start_ticks=ticks,
        created_wall_ns=wall,
        created_mono_ns=mono,
        slot_count=slots,
        ring_capacity=ring,
        accept_capacity=accepts,
        declared_capacity=cap,
        ppid=ppid,
        flags=u32(raw, fmt.OFF_FLAGS)[0],
        slot_high_water=u32(raw, fmt.OFF_SLOT_HIGH_WATER)[0],
        ring_head=u64(raw, fmt.OFF_RING_HEAD)[0],
        accept_head=u64(raw, fmt.OFF_ACCEPT_HEAD)[0],
        slots_exhausted=u64(raw, fmt.OFF_SLOTS_EXHAUSTED)[0],
        write_errors=u64(raw, fmt.OFF_WRITE_ERRORS)[0],
        reader_cursor=u64(raw, fmt.OFF_READER_CURSOR)[0],
        reader_lost=u64(raw, fmt.OFF_READER_LOST)[0],
        server_software=_text(fmt.SERVER_FIELD.unpack_from(raw, fmt.OFF_SERVER)[0], "ascii"),
        times_rejected=u64(raw, fmt.OFF_TIMES_REJECTED)[0],
        spools_lost=u64(raw, fmt.OFF_SPOOLS_LOST)[0],
        records_lost_with_spool=u64(raw, fmt.OFF_RECORDS_LOST_WITH_SPOOL)[0],
    )


def decode_record(seq: int, pid: int, raw: bytes, at: int = 0) -> Record:
    """The record at offset ``at`` of ``raw`` (a ring entry), as sequence ``seq`` of ``pid``."""
    (request, entry, accept, arrival, tid, peer_port, method, source, peer, route) = (
        fmt.SLOT.unpack_from(raw, at)
    )
    (headers, exit_, proxy, nbytes, status, flags, server_port, slot) = fmt.RECORD_EXIT.unpack_from(
        raw, at + fmt.RECORD_EXIT_OFFSET
    )
    return make_record(
        seq=seq,
        pid=pid,
        request=request,
        accept_ns=accept,
        arrival_ns=arrival,
        entry_ns=entry,
        headers_ns=headers,
        exit_ns=exit_,
        proxy_wall_ns=proxy,
        bytes_sent=nbytes,
        tid=tid,
        slot=slot,
        status=status,
        flags=flags,
        peer_port=peer_port,
        server_port=server_port,
        method=_method(method),
        accept_source=_source(source),
        peer=_text(peer, "ascii"),
        route=_text(route),
    )


def decode_slot(index: int, image: bytes) -> SlotState | None:
    """Scoreboard slot ``index`` from its bytes: the request running there, or None if idle."""
    (request, entry, accept, arrival, tid, peer_port, method, source, peer, path) = fmt.SLOT.unpack(
        image
    )
    if not request:
        return None
    return SlotState(
        index,
        request,
        entry,
        accept,
        arrival,
        tid,
        peer_port,
        _method(method),
        _source(source),
        _text(peer, "ascii"),
        _text(path),
    )


def decode_accept(seq: int, raw: bytes, at: int = 0) -> AcceptEvent:
    """The accept event at offset ``at`` of ``raw`` (a ring entry), as sequence ``seq``."""
    accept, arrival, peer_port, server_port, _fd, peer = fmt.ACCEPT_BODY.unpack_from(raw, at)
    return AcceptEvent(seq, accept, arrival, peer_port, server_port, _text(peer, "ascii"))
