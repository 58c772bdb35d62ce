"""A property-based fuzzer of the spool reader: whatever a file holds, and however it changes
under an open reader, the reader returns records or raises ``SpoolFormatError`` (of which
``SpoolNotReady`` is a kind), never anything else, never hangs, and never allocates more
than a small multiple of the file it reads.

The files start as real spools (written by ``open_spool``, the writer every worker uses, with
published records, busy slots and accept events), then hypothesis overwrites byte ranges in
each region with random bytes, zeroes or 0xFF, cuts the file, and changes it again after the
reader opened it.
"""

from __future__ import annotations

import os
import time
import tracemalloc
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from wsgiwatch.errors import SpoolFormatError
from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.reader import MAX_RECORDS_PER_S, SpoolReader
from wsgiwatch.spool.writer import SpoolWriter, open_spool

SLOTS, RING, ACCEPTS = 4, 8, 4
SIZE = fmt.spool_size(SLOTS, RING, ACCEPTS)
RECORD_BASE = fmt.HEADER_SIZE + SLOTS * fmt.SLOT_SIZE
ACCEPT_BASE = RECORD_BASE + RING * fmt.RECORD_SIZE
#: (start, end) of each region: the fuzzer aims at every one of them.
REGIONS = {
    "identity": (0, fmt.HEADER_IDENTITY.size),
    "counters": (fmt.HEADER_IDENTITY.size, fmt.HEADER_SIZE),
    "slots": (fmt.HEADER_SIZE, RECORD_BASE),
    "records": (RECORD_BASE, ACCEPT_BASE),
    "accepts": (ACCEPT_BASE, SIZE),
}
#: Decoding a small spool may allocate this much at most (Record objects, two copies of the
#: ring); a reader sized by a header's claims instead of the file would go far past it.
MEMORY_BOUND = 16 * SIZE + 256 * 1024


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A real spool's bytes: 11 records (the ring lapped), 2 busy slots, 6 accept events."""
    directory = tmp_path_factory.mktemp("pristine")
    directory.chmod(0o700)
    writer = open_spool(str(directory), slot_count=SLOTS, ring_capacity=RING, accept_capacity=4)
    try:
        _fill(writer)
        return bytes(writer.mm)
    finally:
        writer.close()


def _fill(writer: SpoolWriter) -> None:
    mm = writer.mm
    for n in range(11):
        seq = next(writer.record_seq)
        off = writer.record_base + (seq % RING) * fmt.RECORD_SIZE
        mm[off : off + fmt.SLOT_SIZE] = fmt.SLOT.pack(
            n + 1, 10 + n, 5 + n, 6 + n, 77, 40000 + n, 1, 0, b"127.0.0.1", b"/fuzz/:id"
        )
        fmt.RECORD_EXIT.pack_into(mm, off + fmt.RECORD_EXIT_OFFSET, 11, 20 + n, 0, 9, 200, 0, 80, 0)
        fmt.U64.pack_into(mm, off + fmt.RECORD_SEQ_OFFSET, seq + 1)
        fmt.U64.pack_into(mm, fmt.OFF_RING_HEAD, seq + 1)
    for slot in (0, 2):
        off = fmt.HEADER_SIZE + slot * fmt.SLOT_SIZE
        mm[off : off + fmt.SLOT_SIZE] = fmt.SLOT.pack(
            99 + slot, 50, 0, 0, 78, 41000, 3, 0, b"10.0.0.1", b"/running"
        )
    for n in range(6):
        writer.write_accept(30 + n, 0, 42000 + n, 80, 5, b"127.0.0.1")


@pytest.fixture
def fuzz_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("fuzz")
    directory.chmod(0o700)
    yield str(directory)


def _write(path: str, data: bytes) -> None:
    # Written, not truncated to size: every page exists, as with posix_fallocate.
    with open(path, "wb") as f:
        f.write(data)


def _exercise(reader: SpoolReader) -> None:
    for _ in range(3):
        for record in reader.read_records(now_ns=2**62).records:
            assert isinstance(record.route, str) and isinstance(record.method, str)
            assert record.seq >= 0
        reader.scoreboard()
        reader.read_accepts()
        reader.header()


def _read_all(path: str, track: bool) -> None:
    try:
        reader = SpoolReader(path, track=track)
    except SpoolFormatError:
        return
    try:
        _exercise(reader)
    except SpoolFormatError:
        pass
    finally:
        reader.close()


fill = st.one_of(
    st.binary(min_size=1, max_size=256),
    st.sampled_from([b"\0", b"\xff", b"\x7f", b"\x80"]),
)
damage = st.tuples(st.sampled_from(sorted(REGIONS)), st.integers(0, SIZE), fill)


def _apply(data: bytearray, damages: list[tuple[str, int, bytes]]) -> None:
    for region, at, pattern in damages:
        start, end = REGIONS[region]
        where = start + at % max(1, end - start)
        length = min(len(pattern) if len(pattern) > 1 else at % 300 + 1, end - where)
        chunk = (pattern * (length // len(pattern) + 1))[:length]
        data[where : where + length] = chunk


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    damages=st.lists(damage, max_size=8),
    cut=st.one_of(st.none(), st.integers(0, SIZE)),
    track=st.booleans(),
)
def test_damaged_files_give_records_or_a_format_error(
    pristine: bytes,
    fuzz_dir: str,
    damages: list[tuple[str, int, bytes]],
    cut: int | None,
    track: bool,
) -> None:
    data = bytearray(pristine)
    _apply(data, damages)
    if cut is not None:
        del data[cut:]
    path = os.path.join(fuzz_dir, "damaged.spool")
    _write(path, bytes(data))
    tracemalloc.start()
    try:
        _read_all(path, track)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_BOUND


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    damages=st.lists(damage, min_size=1, max_size=6),
    cut=st.one_of(st.none(), st.integers(0, SIZE)),
)
def test_files_changed_under_an_open_reader(
    pristine: bytes, fuzz_dir: str, damages: list[tuple[str, int, bytes]], cut: int | None
) -> None:
    """Opened whole, then damaged or truncated in place (as a hostile or confused process
    would): reads after that give records or SpoolFormatError, never SIGBUS."""
    path = os.path.join(fuzz_dir, "live.spool")
    _write(path, pristine)
    with SpoolReader(path) as reader:
        reader.read_records(limit=3)
        data = bytearray(pristine)
        _apply(data, damages)
        with open(path, "r+b") as f:
            f.write(bytes(data))
            if cut is not None:
                f.truncate(cut)
        try:
            _exercise(reader)
        except SpoolFormatError:
            pass


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=2 * fmt.HEADER_SIZE))
def test_random_files(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    directory = tmp_path_factory.mktemp("random")
    path = os.path.join(directory, "random.spool")
    _write(path, data)
    _read_all(path, track=True)


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    slots=st.integers(0, 2**32 - 1),
    ring=st.integers(0, 2**32 - 1),
    accepts=st.integers(0, 2**32 - 1),
)
def test_any_geometry_is_checked_before_anything_is_sized_from_it(
    pristine: bytes, fuzz_dir: str, slots: int, ring: int, accepts: int
) -> None:
    data = bytearray(pristine)
    fmt.U32.pack_into(data, 40, slots)
    fmt.U32.pack_into(data, 48, ring)
    fmt.U32.pack_into(data, 56, accepts)
    path = os.path.join(fuzz_dir, "geometry.spool")
    _write(path, bytes(data))
    tracemalloc.start()
    try:
        if (slots, ring, accepts) == (SLOTS, RING, ACCEPTS):
            with SpoolReader(path) as reader:
                _exercise(reader)
        else:
            with pytest.raises(SpoolFormatError) as info:
                SpoolReader(path)
            assert info.value.reason in ("geometry", "size")
            assert "geometry.spool" in str(info.value)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MEMORY_BOUND


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    head=st.one_of(st.integers(0, 2**64 - 1), st.sampled_from([2**63, 2**64 - 1, 2**40])),
    cursor=st.one_of(st.integers(0, 2**64 - 1), st.just(11)),
    accept_head=st.integers(0, 2**64 - 1),
)
@example(head=104, cursor=11, accept_head=0)  # a plausible head just past the ring
@example(head=2**63, cursor=2**63 - RING, accept_head=2**63)  # the cursor once saved
def test_forged_heads_and_cursors_never_poison_the_reader(
    pristine: bytes, fuzz_dir: str, head: int, cursor: int, accept_head: int
) -> None:
    """Whatever heads and cursor a file claims, once the worker publishes again the reader
    reads it, and the loss it counts stays what a worker could have lost."""
    data = bytearray(pristine)
    fmt.U64.pack_into(data, fmt.OFF_RING_HEAD, head)
    fmt.U64.pack_into(data, fmt.OFF_READER_CURSOR, cursor)
    fmt.U64.pack_into(data, fmt.OFF_ACCEPT_HEAD, accept_head)
    path = os.path.join(fuzz_dir, "forged.spool")
    _write(path, bytes(data))
    with SpoolReader(path) as reader:
        first = reader.read_records(now_ns=2**62)
        reader.read_accepts()
        # At most what a worker could publish since the file was made (not 2**63).
        age_s = (time.monotonic_ns() - reader.header().created_mono_ns) // 10**9 + 1
        assert first.lost <= RING + MAX_RECORDS_PER_S * age_s
        # The worker goes on from its own counter (seq 11), writing head after each record
        # as it always does, and the reader polls after each. A forged head the reader found
        # plausible may cost it the records up to there (counted lost), but it waits for the
        # worker no longer than a head can trail the newest stamps (the slots, plus 64):
        # further, it resynchronises. Either way it ends up reading the worker again.
        last = 11 + RING + SLOTS + 64 + RING
        routes: list[str] = []
        with open(path, "r+b") as f:
            for seq in range(11, last + 1):
                f.seek(RECORD_BASE + (seq % RING) * fmt.RECORD_SIZE)
                route = f"/after/{seq}".encode()
                f.write(
                    fmt.SLOT.pack(seq + 1, 21, 0, 0, 77, 40011, 1, 0, b"127.0.0.1", route)
                    + fmt.RECORD_EXIT.pack(22, 30, 0, 9, 200, 0, 80, 0)
                    + fmt.U64.pack(seq + 1)
                )
                f.seek(fmt.OFF_RING_HEAD)
                f.write(fmt.U64.pack(seq + 1))
                f.flush()
                routes += [r.route for r in reader.read_records(now_ns=2**62).records]
        assert f"/after/{last}" in routes
