"""What a spool holds, as values: the header, finished-request records, busy slots and accept
events, and their decoding from the bytes :mod:`wsgiwatch.spool.layout` defines.

Decoding here is pure (bytes in, value out); which bytes to trust, and when, is the reader's
job (:mod:`wsgiwatch.spool.reader`). Also :func:`queue_wait_ns`, the one definition of queue
wait, and :func:`make_record`. Decoding records in batches, as the reader does, is in
:mod:`wsgiwatch.spool.record_batch`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from wsgiwatch.spool import layout as fmt

__all__ = [
    "AcceptEvent",
    "Record",
    "SlotState",
    "SpoolHeader",
    "decode_accept",
    "decode_header",
    "decode_slot",
    "make_record",
    "method_name",
    "queue_wait_ns",
    "source_name",
    "text_field",
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


class Record(NamedTuple):
    """One finished request. Times are CLOCK_MONOTONIC ns; 0 means unknown.

    A named tuple, not a dataclass: the sidecar builds one per finished request, and a
    tuple is built in one call (a frozen dataclass sets its 20 fields one by one, about
    four times slower), and a tuple of ints and strings is untracked by the cyclic garbage
    collector, which then never walks the tens of thousands the sidecar keeps."""

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

    @property
    def raised(self) -> bool:
        """Ended by an exception (as :attr:`wsgiwatch.sidecar.detect.Run.raised`)."""
        return bool(self.flags & fmt.FLAG_APP_RAISED)

    def end(self, now_ns: int) -> int:
        """When it left the app (as :meth:`wsgiwatch.sidecar.detect.Run.end`: a finished
        request is a run in a worker's history)."""
        return self.exit_ns or now_ns


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
    """``Record(...)`` (kept for callers from when a Record was slower to build)."""
    return _new_record(
        Record,
        (
            seq,
            pid,
            request,
            accept_ns,
            arrival_ns,
            entry_ns,
            headers_ns,
            exit_ns,
            proxy_wall_ns,
            bytes_sent,
            tid,
            slot,
            status,
            flags,
            peer_port,
            server_port,
            method,
            accept_source,
            peer,
            route,
        ),
    )


_new_record = tuple.__new__


def text_field(raw: bytes, encoding: str = "utf-8") -> str:
    """A NUL-padded text field as the format defines it (invalid bytes replaced)."""
    return raw.rstrip(b"\0").decode(encoding, "replace")


def method_name(code: int) -> str:
    return fmt.METHODS[code] if code < len(fmt.METHODS) else "OTHER"


def source_name(code: int) -> str:
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
        server_software=text_field(fmt.SERVER_FIELD.unpack_from(raw, fmt.OFF_SERVER)[0], "ascii"),
        times_rejected=u64(raw, fmt.OFF_TIMES_REJECTED)[0],
        spools_lost=u64(raw, fmt.OFF_SPOOLS_LOST)[0],
        records_lost_with_spool=u64(raw, fmt.OFF_RECORDS_LOST_WITH_SPOOL)[0],
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
        method_name(method),
        source_name(source),
        text_field(peer, "ascii"),
        text_field(path),
    )


def decode_accept(seq: int, raw: bytes, at: int = 0) -> AcceptEvent:
    """The accept event at offset ``at`` of ``raw`` (a ring entry), as sequence ``seq``."""
    accept, arrival, peer_port, server_port, _fd, peer = fmt.ACCEPT_BODY.unpack_from(raw, at)
    return AcceptEvent(seq, accept, arrival, peer_port, server_port, text_field(peer, "ascii"))
