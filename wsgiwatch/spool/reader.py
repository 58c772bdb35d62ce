"""Reading spool files: what the sidecar, ``wsgiwatch top`` and the tests see of the workers.

A :class:`SpoolReader` follows one worker's spool: the finished-request records since its
cursor (detecting torn entries and counting records overwritten before it read them), the
scoreboard now, and accept events. A damaged file gives :class:`SpoolFormatError` naming the
file and the field; it never crashes the reader with anything else.
"""

from __future__ import annotations

import dataclasses
import os
import time
from dataclasses import dataclass

from wsgiwatch.errors import SpoolFormatError, SpoolNotReady
from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.spool_file import open_spool_file, pread_exact

__all__ = [
    "AcceptEvent",
    "ReadResult",
    "Record",
    "SlotState",
    "SpoolFormatError",
    "SpoolHeader",
    "SpoolNotReady",
    "SpoolReader",
    "list_spools",
    "queue_wait_ns",
]

#: An entry claimed but still unwritten this long after a later one was published belongs
#: to a writer that died mid-write (or was stopped): give up on it and count it torn.
STUCK_ENTRY_TIMEOUT_NS = 2_000_000_000
#: (or sooner, when the records published after it fill half the ring: see read_records)
#: Ten times the fastest a worker publishes records (the C path takes about 1 us per
#: request): a ring head further ahead of the cursor than this pace allows since the last
#: read was not written by a worker, and is not followed.
MAX_RECORDS_PER_S = 10_000_000
#: The pace above is applied over at least this long (clock reads a few us apart).
MIN_ELAPSED_NS = 1_000_000
#: Most ring entries one call copies and decodes (bounds the memory of one call).
READ_BATCH = 16_384
#: Ring entries per copy when reading the stamps of a whole ring (after an implausible head).
SCAN_CHUNK = 4096


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
    file shows what was lost; ``track=False`` only reads.

    Nothing is mapped: every read is a ``pread`` copy (see :mod:`wsgiwatch.spool.spool_file`
    for why), checked for length, so a file truncated under the reader raises
    :class:`SpoolFormatError` naming the offset. Torn entries are detected as with a mapping:
    a region is copied twice, and an entry is kept when its stamp was right in the first copy
    (it was whole before the second copy began) and in the second (no new lap began before
    its body was copied: the kernel copies forward, body before stamp).

    Ring heads are hints written by the worker, and anyone who can write the file can write
    them: a head further ahead than any worker could publish since the last read is not
    followed (that once moved a cursor to 2**63 for good); the real head is read off the
    entries' own stamps instead, and :attr:`resyncs` counts each such event.
    """

    def __init__(self, path: str, *, track: bool = True) -> None:
        self.path = path
        fd, writable, geometry = open_spool_file(path, writable=track)
        self._fd = fd
        self._closed = False
        self.track = track and writable
        self._slot_count = geometry.slot_count
        self._ring = geometry.ring_capacity
        self._accepts = geometry.accept_capacity
        self._record_base = geometry.record_base
        self._accept_base = geometry.accept_base
        #: Implausible ring heads or cursors found and recovered from (see the class doc).
        self.resyncs = 0
        self.last_resync = ""
        self._stuck_at = -1
        self._stuck_since = 0
        try:
            h = self.header()
            self.pid = h.pid
            self.start_ticks = h.start_ticks
            now = time.monotonic_ns()
            # Since the file was made (its header may lie: then since boot, still a bound).
            age = now - h.created_mono_ns if 0 < h.created_mono_ns <= now else now
            # Checked from zero: a cursor saved in the file may itself be the bad value.
            head = self._checked_head("ring_head", h.ring_head, 0, self._ring, age)
            cursor = max(0, head - self._ring)
            if self.track:
                # A tracking reader resumes where the last one stopped, so what was
                # overwritten meanwhile (or before any reader came) is counted lost.
                cursor = self._checked_cursor("reader_cursor", h.reader_cursor, head, self._ring)
            self.cursor = cursor
            accept_head = self._checked_head("accept_head", h.accept_head, 0, self._accepts, age)
            self.accept_cursor = max(0, accept_head - self._accepts)
        except BaseException:
            self.close()
            raise
        # Heads already seen bound the next ones (with the time since): see _checked_head.
        self._records_read_ns = self._accepts_read_ns = now
        self._ring_head_seen, self._accept_head_seen = head, accept_head

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            os.close(self._fd)

    def __del__(self) -> None:
        # A reader dropped without close() (as a mapping was unmapped when collected).
        if not getattr(self, "_closed", True):
            self.close()

    def __enter__(self) -> SpoolReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- raw access ------------------------------------------------------------------------
    def _read(self, size: int, offset: int) -> bytes:
        return pread_exact(self._fd, size, offset, self.path)

    def _entries(self, first: int, count: int, base: int, size: int, cap: int) -> bytes:
        """``count`` consecutive ring entries from sequence ``first``, in sequence order."""
        start = first % cap
        head_part = min(count, cap - start)
        data = self._read(head_part * size, base + start * size)
        if head_part < count:  # wrapped around the end of the ring
            data += self._read((count - head_part) * size, base)
        return data

    def _resync(self, message: str) -> None:
        self.resyncs += 1
        self.last_resync = message

    def _checked_cursor(self, name: str, cursor: int, head: int, cap: int) -> int:
        """``cursor``, unless it is ahead of everything the worker has published (a head
        can trail the newest stamps by the requests finishing at once, never by more than
        the slots): then the oldest entry the ring may still hold (counted)."""
        if cursor <= head + self._slot_count + 64:
            return cursor
        oldest = max(0, head - cap)
        self._resync(
            f"{self.path}: {name} {cursor} is ahead of the head {head}; reading from {oldest}"
        )
        return oldest

    def _checked_head(self, name: str, head: int, seen: int, cap: int, elapsed_ns: int) -> int:
        """``head`` when a worker could have published that far since the reader saw
        ``seen`` (its cursor or the last head it accepted, ``elapsed_ns`` ago), else the
        highest sequence the ring's stamps show (counted in :attr:`resyncs`)."""
        elapsed_ns = max(elapsed_ns, MIN_ELAPSED_NS)
        bound = seen + cap + MAX_RECORDS_PER_S * elapsed_ns // 1_000_000_000
        cursor = seen
        if head <= bound:
            return head
        if name == "ring_head":
            offset, base, size, stamp_at = (
                fmt.OFF_RING_HEAD,
                self._record_base,
                fmt.RECORD_SIZE,
                fmt.RECORD_SEQ_OFFSET,
            )
        else:
            offset, base, size, stamp_at = (
                fmt.OFF_ACCEPT_HEAD,
                self._accept_base,
                fmt.ACCEPT_SIZE,
                fmt.ACCEPT_SEQ_OFFSET,
            )
        found = max(cursor, self._scan_head(base, size, stamp_at, cap, bound))
        self._resync(
            f"{self.path}: {name} {head} at offset {offset} is beyond what a worker could "
            f"publish (at most {bound}); resynchronised at {found} from the entries' stamps"
        )
        return found

    def _scan_head(self, base: int, size: int, stamp_at: int, cap: int, bound: int) -> int:
        """1 + the highest sequence whose stamp sits in its own ring entry and is below
        ``bound``; 0 when there is none."""
        best = 0
        u64 = fmt.U64.unpack_from
        for chunk_start in range(0, cap, SCAN_CHUNK):
            count = min(SCAN_CHUNK, cap - chunk_start)
            data = self._read(count * size, base + chunk_start * size)
            for k in range(count):
                stamp = u64(data, k * size + stamp_at)[0]
                # Stamps are sequence + 1 and sit in their own entry; INVALID_SEQ is above
                # any bound, so entries being rewritten never count.
                if best < stamp <= bound and (stamp - 1) % cap == chunk_start + k:
                    best = stamp
        return best

    # -- header ----------------------------------------------------------------------------
    def header(self) -> SpoolHeader:
        raw = self._read(fmt.HEADER_SIZE, 0)
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

    # -- records ---------------------------------------------------------------------------
    def read_records(self, limit: int | None = None, *, now_ns: int | None = None) -> ReadResult:
        """Records published since the cursor, oldest first (at most ``limit``)."""
        ring = self._ring
        u64 = fmt.U64.unpack_from
        counters = self._read(fmt.OFF_READER_LOST + 8, 0)
        wall_now = time.monotonic_ns()
        head = self._checked_head(
            "ring_head",
            u64(counters, fmt.OFF_RING_HEAD)[0],
            max(self.cursor, self._ring_head_seen),
            ring,
            wall_now - self._records_read_ns,
        )
        self._records_read_ns, self._ring_head_seen = wall_now, head
        i = self.cursor = self._checked_cursor("cursor", self.cursor, head, ring)
        lost = torn = 0
        if head > i + ring:
            lost += head - ring - i
            i = head - ring
        out: list[Record] = []
        budget = min(ring, READ_BATCH) if limit is None else min(limit, ring, READ_BATCH)
        count = min(budget, max(0, head - i))
        size = fmt.RECORD_SIZE
        if count:
            # Two copies: the first's stamps say which entries were whole before the second
            # began; the second's bodies are kept when its stamps still agree.
            first = self._entries(i, count, self._record_base, size, ring)
            second = self._entries(i, count, self._record_base, size, ring)
        for k in range(count):
            at = k * size
            stamp = i + 1  # entries carry their sequence plus one: zeroes are never valid
            s1 = u64(first, at + fmt.RECORD_SEQ_OFFSET)[0]
            if s1 == stamp:
                if u64(second, at + fmt.RECORD_SEQ_OFFSET)[0] == stamp:
                    out.append(self._record(i, second, at))
                else:
                    lost += 1  # rewritten while we read it: the writer lapped us
                i += 1
                continue
            if s1 != fmt.INVALID_SEQ and s1 > stamp and (s1 - 1) % ring == i % ring:
                lost += 1  # a newer lap already overwrote it
                i += 1
                continue
            # Claimed but not written yet: a writer still at work, or one that died mid-write.
            now = wall_now if now_ns is None else now_ns
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
            os.pwrite(self._fd, fmt.U64.pack(i), fmt.OFF_READER_CURSOR)
            if lost:
                total = u64(counters, fmt.OFF_READER_LOST)[0] + lost
                os.pwrite(
                    self._fd, fmt.U64.pack(total & 0xFFFF_FFFF_FFFF_FFFF), fmt.OFF_READER_LOST
                )
        return ReadResult(out, lost, torn)

    def _record(self, seq: int, raw: bytes, at: int = 0) -> Record:
        (request, entry, accept, arrival, tid, peer_port, method, source, peer, route) = (
            fmt.SLOT.unpack_from(raw, at)
        )
        (headers, exit_, proxy, nbytes, status, flags, server_port, slot) = (
            fmt.RECORD_EXIT.unpack_from(raw, at + fmt.RECORD_EXIT_OFFSET)
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
        size = fmt.SLOT_SIZE
        total = self._slot_count * size
        # A slot is rewritten in one store: two equal copies are one consistent state. The
        # whole board is copied once; busy slots (usually few) once more each.
        board = self._read(total, fmt.HEADER_SIZE)
        busy: list[SlotState] = []
        for index in range(self._slot_count):
            at = index * size
            if fmt.SLOT_REQUEST.unpack_from(board, at)[0] == 0:
                continue
            offset = fmt.HEADER_SIZE + at
            image = board[at : at + size]
            for _attempt in range(3):
                again = self._read(size, offset)
                if again == image:
                    break
                image = again
            else:
                continue
            (request, entry, accept, arrival, tid, peer_port, method, source, peer, path) = (
                fmt.SLOT.unpack(image)
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
        cap = self._accepts
        now = time.monotonic_ns()
        head = self._checked_head(
            "accept_head",
            fmt.U64.unpack_from(self._read(8, fmt.OFF_ACCEPT_HEAD), 0)[0],
            max(self.accept_cursor, self._accept_head_seen),
            cap,
            now - self._accepts_read_ns,
        )
        self._accepts_read_ns, self._accept_head_seen = now, head
        self.accept_cursor = self._checked_cursor("accept cursor", self.accept_cursor, head, cap)
        i = max(self.accept_cursor, head - cap)
        count = max(0, head - i)
        out: list[AcceptEvent] = []
        if count:
            size = fmt.ACCEPT_SIZE
            first = self._entries(i, count, self._accept_base, size, cap)
            second = self._entries(i, count, self._accept_base, size, cap)
            u64 = fmt.U64.unpack_from
            for k in range(count):
                at = k * size
                stamp = i + k + 1  # stamps are sequence + 1
                stamp_at = at + fmt.ACCEPT_SEQ_OFFSET
                if u64(first, stamp_at)[0] == stamp and u64(second, stamp_at)[0] == stamp:
                    accept, arrival, peer_port, server_port, _fd, peer = (
                        fmt.ACCEPT_BODY.unpack_from(second, at)
                    )
                    out.append(
                        AcceptEvent(
                            i + k, accept, arrival, peer_port, server_port, _text(peer, "ascii")
                        )
                    )
        self.accept_cursor = max(self.accept_cursor, head)
        return out


def list_spools(directory: str) -> list[str]:
    """Paths of the spool files in ``directory`` (empty when it does not exist)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(os.path.join(directory, n) for n in names if n.endswith(fmt.SUFFIX))
