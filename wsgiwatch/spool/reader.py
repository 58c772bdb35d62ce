"""Reading spool files: what the sidecar, ``wsgiwatch top`` and the tests see of the workers.

A :class:`SpoolReader` follows one worker's spool: the finished-request records since its
cursor (detecting torn entries and counting records overwritten before it read them), the
scoreboard now, and accept events. A damaged file gives :class:`SpoolFormatError` naming the
file and the field; it never crashes the reader with anything else.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import time
from dataclasses import dataclass

from wsgiwatch.errors import SpoolFormatError, SpoolNotReady
from wsgiwatch.spool import layout as fmt

__all__ = [
    "AcceptEvent",
    "ReadResult",
    "Record",
    "SlotState",
    "SpoolFormatError",
    "SpoolHeader",
    "SpoolReader",
    "list_spools",
    "queue_wait_ns",
]

#: An entry claimed but still unwritten this long after a later one was published belongs
#: to a writer that died mid-write (or was stopped): give up on it and count it torn.
STUCK_ENTRY_TIMEOUT_NS = 2_000_000_000
#: (or sooner, when the records published after it fill half the ring: see read_records)


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


@dataclass(frozen=True, slots=True)
class ReadResult:
    records: list[Record]
    lost: int  # overwritten before this reader got to them
    torn: int  # claimed by a writer that never finished them


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


class SpoolReader:
    """Follows one spool file. ``track=True`` (the sidecar) also writes its cursor and its
    loss count into the header, so a restarted sidecar resumes and the writer's side of the
    file shows what was lost; ``track=False`` only reads."""

    def __init__(self, path: str, *, track: bool = True) -> None:
        self.path = path
        self._mm = self._map(path, track)
        self.track = track and self._writable
        h = self.header()
        self.pid = h.pid
        self.start_ticks = h.start_ticks
        self._slot_count = h.slot_count
        self._ring = h.ring_capacity
        self._accepts = h.accept_capacity
        self._record_base = fmt.HEADER_SIZE + h.slot_count * fmt.SLOT_SIZE
        self._accept_base = self._record_base + h.ring_capacity * fmt.RECORD_SIZE
        oldest = max(0, h.ring_head - h.ring_capacity)
        # A tracking reader resumes where the last one stopped, so what was overwritten
        # meanwhile (or before any reader came) is counted lost, not silently skipped.
        self.cursor = h.reader_cursor if self.track else oldest
        self.accept_cursor = max(0, h.accept_head - h.accept_capacity)
        self._stuck_at = -1
        self._stuck_since = 0

    def _map(self, path: str, track: bool) -> mmap.mmap:
        self._writable = False
        try:
            if track:
                try:
                    fd = os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
                    self._writable = True
                except PermissionError:
                    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
            else:
                fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            raise SpoolFormatError(f"{path}: cannot open: {exc}") from exc
        try:
            size = os.fstat(fd).st_size
            if size < fmt.HEADER_SIZE:
                raise SpoolFormatError(
                    f"{path}: {size} bytes, shorter than the {fmt.HEADER_SIZE}-byte header"
                )
            access = mmap.ACCESS_WRITE if self._writable else mmap.ACCESS_READ
            try:
                mm = mmap.mmap(fd, size, access=access)
            except (OSError, ValueError) as exc:
                raise SpoolFormatError(f"{path}: cannot map: {exc}") from exc
        finally:
            os.close(fd)
        try:
            self._validate(mm, path, size)
        except SpoolFormatError:
            mm.close()
            raise
        return mm

    @staticmethod
    def _validate(mm: mmap.mmap, path: str, size: int) -> None:
        (
            magic,
            version,
            header_size,
            _pid,
            _ticks,
            _wall,
            _mono,
            slots,
            slot_size,
            ring,
            record_size,
            accepts,
            accept_size,
            _cap,
            _ppid,
        ) = fmt.HEADER_IDENTITY.unpack_from(mm, 0)
        if magic == b"\0" * 8:
            raise SpoolNotReady(f"{path}: not initialised yet (magic still zero)")
        if magic != fmt.MAGIC:
            raise SpoolFormatError(
                f"{path}: bad magic {magic!r} at offset 0 (not a wsgiwatch "
                "spool, or still being created)"
            )
        if version != fmt.VERSION:
            raise SpoolFormatError(
                f"{path}: format version {version} at offset 8; this "
                f"wsgiwatch reads version {fmt.VERSION}"
            )
        for name, found, want in (
            ("header_size", header_size, fmt.HEADER_SIZE),
            ("slot_size", slot_size, fmt.SLOT_SIZE),
            ("record_size", record_size, fmt.RECORD_SIZE),
            ("accept_size", accept_size, fmt.ACCEPT_SIZE),
        ):
            if found != want:
                raise SpoolFormatError(f"{path}: {name} is {found}, expected {want}")
        if not (slots and ring and accepts):
            raise SpoolFormatError(
                f"{path}: empty geometry (slots={slots}, ring={ring}, accepts={accepts})"
            )
        expected = fmt.spool_size(slots, ring, accepts)
        if size != expected:
            raise SpoolFormatError(
                f"{path}: file is {size} bytes, its header describes "
                f"{expected} (slots={slots}, ring={ring}, accepts={accepts})"
            )

    def close(self) -> None:
        self._mm.close()

    def __enter__(self) -> SpoolReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- header ----------------------------------------------------------------------------
    def header(self) -> SpoolHeader:
        mm = self._mm
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
        ) = fmt.HEADER_IDENTITY.unpack_from(mm, 0)
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
            flags=u32(mm, fmt.OFF_FLAGS)[0],
            slot_high_water=u32(mm, fmt.OFF_SLOT_HIGH_WATER)[0],
            ring_head=u64(mm, fmt.OFF_RING_HEAD)[0],
            accept_head=u64(mm, fmt.OFF_ACCEPT_HEAD)[0],
            slots_exhausted=u64(mm, fmt.OFF_SLOTS_EXHAUSTED)[0],
            write_errors=u64(mm, fmt.OFF_WRITE_ERRORS)[0],
            reader_cursor=u64(mm, fmt.OFF_READER_CURSOR)[0],
            reader_lost=u64(mm, fmt.OFF_READER_LOST)[0],
            server_software=_text(fmt.SERVER_FIELD.unpack_from(mm, fmt.OFF_SERVER)[0], "ascii"),
        )

    # -- records ---------------------------------------------------------------------------
    def read_records(self, limit: int | None = None, *, now_ns: int | None = None) -> ReadResult:
        """Records published since the cursor, oldest first (at most ``limit``)."""
        mm = self._mm
        ring = self._ring
        base = self._record_base
        seq_at = fmt.U64.unpack_from
        head = seq_at(mm, fmt.OFF_RING_HEAD)[0]
        i = self.cursor
        lost = torn = 0
        if head > i + ring:
            lost += head - ring - i
            i = head - ring
        out: list[Record] = []
        budget = ring if limit is None else min(limit, ring)
        while len(out) < budget:
            off = base + (i % ring) * fmt.RECORD_SIZE
            seq_off = off + fmt.RECORD_SEQ_OFFSET
            stamp = i + 1  # entries carry their sequence plus one: zeroes are never valid
            s1 = seq_at(mm, seq_off)[0]
            if s1 == stamp:
                raw = mm[off:seq_off]
                if seq_at(mm, seq_off)[0] == stamp:
                    out.append(self._record(i, raw))
                else:
                    lost += 1  # rewritten while we read it: the writer lapped us
                i += 1
                continue
            if s1 != fmt.INVALID_SEQ and s1 > stamp and (s1 - 1) % ring == i % ring:
                lost += 1  # a newer lap already overwrote it
                i += 1
                continue
            # Not written yet: the end of what is published, or a writer still at work.
            if i >= head:
                break
            now = time.monotonic_ns() if now_ns is None else now_ns
            if self._stuck_at != i:
                self._stuck_at, self._stuck_since = i, now
                break
            # Waiting for it holds back every record after it: once they fill half the
            # ring, give it up (one record) rather than lose the ring's worth behind it.
            if now - self._stuck_since < STUCK_ENTRY_TIMEOUT_NS and head - i < ring // 2:
                break
            torn += 1
            i += 1
        self.cursor = i
        if self.track:
            fmt.U64.pack_into(mm, fmt.OFF_READER_CURSOR, i)
            if lost:
                total = seq_at(mm, fmt.OFF_READER_LOST)[0] + lost
                fmt.U64.pack_into(mm, fmt.OFF_READER_LOST, total)
        return ReadResult(out, lost, torn)

    def _record(self, seq: int, raw: bytes) -> Record:
        (request, entry, accept, arrival, tid, peer_port, method, source, peer, route) = (
            fmt.SLOT.unpack_from(raw, 0)
        )
        (headers, exit_, proxy, nbytes, status, flags, server_port, slot) = (
            fmt.RECORD_EXIT.unpack_from(raw, fmt.RECORD_EXIT_OFFSET)
        )
        return make_record(
            seq=seq,
            pid=self.pid,
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

    # -- scoreboard ------------------------------------------------------------------------
    def scoreboard(self) -> list[SlotState]:
        """The requests running now, one per busy slot."""
        mm = self._mm
        busy: list[SlotState] = []
        size = fmt.SLOT_SIZE
        for index in range(self._slot_count):
            off = fmt.HEADER_SIZE + index * size
            if fmt.SLOT_REQUEST.unpack_from(mm, off)[0] == 0:
                continue
            # A slot is rewritten in one store: two equal reads are one consistent state.
            for _attempt in range(3):
                first = mm[off : off + size]
                if first == mm[off : off + size]:
                    break
            else:
                continue
            (request, entry, accept, arrival, tid, peer_port, method, source, peer, path) = (
                fmt.SLOT.unpack(first)
            )
            if request:
                busy.append(
                    SlotState(
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
                )
        return busy

    # -- accept events ---------------------------------------------------------------------
    def read_accepts(self) -> list[AcceptEvent]:
        """Accept events since the last call (oldest first); overwritten ones are skipped."""
        mm = self._mm
        cap = self._accepts
        head = fmt.U64.unpack_from(mm, fmt.OFF_ACCEPT_HEAD)[0]
        i = max(self.accept_cursor, head - cap)
        out: list[AcceptEvent] = []
        while i < head:
            off = self._accept_base + (i % cap) * fmt.ACCEPT_SIZE
            seq_off = off + fmt.ACCEPT_SEQ_OFFSET
            if fmt.U64.unpack_from(mm, seq_off)[0] == i + 1:  # stamps are sequence + 1
                accept, arrival, peer_port, server_port, _fd, peer = fmt.ACCEPT_BODY.unpack_from(
                    mm, off
                )
                if fmt.U64.unpack_from(mm, seq_off)[0] == i + 1:
                    out.append(
                        AcceptEvent(
                            i, accept, arrival, peer_port, server_port, _text(peer, "ascii")
                        )
                    )
            i += 1
        self.accept_cursor = i
        return out


def list_spools(directory: str) -> list[str]:
    """Paths of the spool files in ``directory`` (empty when it does not exist)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(os.path.join(directory, n) for n in names if n.endswith(fmt.SUFFIX))
