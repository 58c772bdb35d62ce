"""Reading spool files: what the sidecar, ``wsgiwatch top`` and the tests see of the workers.

A :class:`SpoolReader` follows one worker's spool: the finished-request records since its
cursor (detecting torn entries and counting records overwritten before it read them), the
scoreboard now, and accept events. A damaged file gives :class:`SpoolFormatError` naming the
file and the field; it never crashes the reader with anything else. :func:`list_spools`
finds the spool files of a directory.

The values it returns, and their decoding from bytes, are in :mod:`wsgiwatch.spool.records`
(re-exported here, where most callers import them from).
"""

from __future__ import annotations

import functools
import operator
import os
import struct
import time
from dataclasses import dataclass

from wsgiwatch.errors import SpoolFormatError, SpoolNotReady
from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.record_batch import RECORD_ROW, RECORD_STAMP, Row, decode_block, decode_rows
from wsgiwatch.spool.records import (
    AcceptEvent,
    Record,
    SlotState,
    SpoolHeader,
    decode_accept,
    decode_header,
    decode_slot,
    make_record,
    queue_wait_ns,
)
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
    "make_record",
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


_first = operator.itemgetter(0)


@dataclass(frozen=True, slots=True)
class ReadResult:
    records: list[Record]
    lost: int  # overwritten before this reader got to them
    torn: int  # claimed by a writer that never finished them


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
        self._glance = _glance_struct(self._slot_count)
        self._requests = _requests_struct(self._slot_count)
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
        return decode_header(self._read(fmt.HEADER_SIZE, 0))

    def glance(self) -> tuple[int, tuple[int, ...]]:
        """(ring head, the request number in every slot: 0 = idle) from one ``pread`` and
        one ``unpack``: what the sidecar looks at between polls, twenty times a second, so
        it decodes nothing else (no header object, no slot objects). A slot being
        rewritten may read as busy or idle: the caller only counts them."""
        values = self._glance.unpack(self._read(self._glance.size, 0))
        return values[0], values[1:]

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
        budget = min(ring, READ_BATCH) if limit is None else min(limit, ring, READ_BATCH)
        count = min(budget, max(0, head - i))
        good: list[tuple[int, Row]] = []
        whole: list[Record] = []
        if count:
            # Two copies: the first's stamps say which entries were whole before the second
            # began; the second's bodies are kept when its stamps still agree. Each copy is
            # unpacked whole (iter_unpack): one call, not two per entry.
            first = self._entries(i, count, self._record_base, fmt.RECORD_SIZE, ring)
            second = self._entries(i, count, self._record_base, fmt.RECORD_SIZE, ring)
            stamps = list(map(_first, RECORD_STAMP.iter_unpack(first)))
            expected = list(range(i + 1, i + 1 + count))
            rows: list[Row] = []
            if stamps == expected and stamps == list(map(_first, RECORD_STAMP.iter_unpack(second))):
                # The usual case, checked in C: every entry whole in both copies.
                whole = decode_block(self.pid, i, second)
                i += count
            else:
                rows = list(RECORD_ROW.iter_unpack(second))
            keep = good.append
            for s1, row in zip(stamps, rows, strict=False):
                stamp = i + 1  # entries carry their sequence plus one: zeroes are never valid
                if s1 == stamp:
                    if row[-1] == stamp:
                        keep((i, row))
                    else:
                        lost += 1  # rewritten while we read it: the writer lapped us
                    i += 1
                    continue
                if s1 != fmt.INVALID_SEQ and s1 > stamp and (s1 - 1) % ring == i % ring:
                    lost += 1  # a newer lap already overwrote it
                    i += 1
                    continue
                # Claimed but not written yet: a writer at work, or one that died mid-write.
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
        out = whole + decode_rows(self.pid, good) if good else whole
        self.cursor = i
        if self.track:
            os.pwrite(self._fd, fmt.U64.pack(i), fmt.OFF_READER_CURSOR)
            if lost:
                total = u64(counters, fmt.OFF_READER_LOST)[0] + lost
                os.pwrite(
                    self._fd, fmt.U64.pack(total & 0xFFFF_FFFF_FFFF_FFFF), fmt.OFF_READER_LOST
                )
        return ReadResult(out, lost, torn)

    def ask_identity(self, until_ns: int) -> None:
        """Ask the worker to read its connections' own peer ports until ``until_ns``
        (monotonic; 0: stop), in the header's ``identity_until`` (see layout). Written odd,
        so that the worker's one-byte check sees it set. A read-only reader writes nothing."""
        if self.track:
            value = (until_ns | 1) if until_ns else 0
            os.pwrite(self._fd, fmt.U64.pack(value), fmt.OFF_IDENTITY_UNTIL)

    # -- scoreboard ------------------------------------------------------------------------
    def scoreboard(self) -> list[SlotState]:
        """The requests running now, one per busy slot."""
        return self._busy(self._read(self._slot_count * fmt.SLOT_SIZE, fmt.HEADER_SIZE), 0)

    def header_and_scoreboard(self) -> tuple[SpoolHeader, list[SlotState]]:
        """:meth:`header` and :meth:`scoreboard` from one copy of the file's first bytes
        (they are contiguous): what the sidecar reads of every worker on every poll."""
        data = self._read(fmt.HEADER_SIZE + self._slot_count * fmt.SLOT_SIZE, 0)
        return decode_header(data), self._busy(data, fmt.HEADER_SIZE)

    def _busy(self, data: bytes, base: int) -> list[SlotState]:
        """The busy slots of the board copied into ``data`` at ``base``."""
        size = fmt.SLOT_SIZE
        # A slot is rewritten in one store: two equal copies are one consistent state. The
        # whole board is copied once; busy slots (usually few) once more each.
        busy: list[SlotState] = []
        requests = self._requests.unpack_from(data, base)
        for index in [i for i, request in enumerate(requests) if request]:
            at = base + index * size
            offset = fmt.HEADER_SIZE + index * size
            image = data[at : at + size]
            for _attempt in range(3):
                again = self._read(size, offset)
                if again == image:
                    break
                image = again
            else:
                continue
            state = decode_slot(index, image)
            if state is not None:
                busy.append(state)
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
                    out.append(decode_accept(i + k, second, at))
        self.accept_cursor = max(self.accept_cursor, head)
        return out


@functools.lru_cache(maxsize=16)
def _requests_struct(slot_count: int) -> struct.Struct:
    """The first field (the request number) of each of ``slot_count`` slots, from the
    scoreboard's bytes, in one call (not one ``unpack_from`` per slot)."""
    skip = fmt.SLOT_SIZE - fmt.SLOT_REQUEST.size
    return struct.Struct("<" + f"Q{skip}x" * slot_count)


@functools.lru_cache(maxsize=16)
def _glance_struct(slot_count: int) -> struct.Struct:
    """The ring head, then the request number of each slot, from the file's first bytes
    (header and scoreboard are contiguous)."""
    before = fmt.OFF_RING_HEAD
    after = fmt.HEADER_SIZE - before - fmt.U64.size
    board = _requests_struct(slot_count).format.lstrip("<")
    # The last slot's tail after its request number is left unread.
    trailing = f"{fmt.SLOT_SIZE - fmt.SLOT_REQUEST.size}x"
    board = board[: -len(trailing)] if slot_count else board
    return struct.Struct(f"<{before}xQ{after}x{board}")


def list_spools(directory: str) -> list[str]:
    """Paths of the spool files in ``directory`` (empty when it does not exist)."""
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(os.path.join(directory, n) for n in names if n.endswith(fmt.SUFFIX))
