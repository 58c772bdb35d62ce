"""The spool reader: records since a cursor, torn and lapped entries, damaged files."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsgiwatch.errors import SpoolFormatError
from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.reader import STUCK_ENTRY_TIMEOUT_NS, SpoolReader, list_spools
from wsgiwatch.spool.writer import SpoolWriter, open_spool


def publish(
    writer: SpoolWriter,
    request: int,
    route: bytes = b"/r",
    *,
    status: int = 200,
    entry: int = 1000,
    exit_: int = 2000,
    stamp: bool = True,
) -> int:
    """Write one finished record the way the middleware does; return its sequence."""
    seq = next(writer.record_seq)
    off = writer.record_base + (seq % writer.ring_capacity) * fmt.RECORD_SIZE
    mm = writer.mm
    mm[off + fmt.RECORD_SEQ_OFFSET : off + fmt.RECORD_SIZE] = fmt.U64.pack(fmt.INVALID_SEQ)
    fmt.SLOT.pack_into(mm, off, request, entry, 0, 0, 7, 5555, 1, 0, b"10.0.0.1", route)
    fmt.RECORD_EXIT.pack_into(
        mm, off + fmt.RECORD_EXIT_OFFSET, entry + 10, exit_, 0, 5, status, 0, 8000, 0
    )
    if stamp:
        fmt.U64.pack_into(mm, off + fmt.RECORD_SEQ_OFFSET, seq + 1)
        fmt.U64.pack_into(mm, fmt.OFF_RING_HEAD, seq + 1)
    return seq


@pytest.fixture
def writer(spool_dir: str) -> SpoolWriter:
    w = open_spool(spool_dir, slot_count=4, ring_capacity=8, accept_capacity=4)
    yield w
    w.unmap()


def test_reads_published_records_in_order(writer: SpoolWriter) -> None:
    reader = SpoolReader(writer.path)
    for n in range(1, 4):
        publish(writer, n, b"/r%d" % n, status=200 + n)
    result = reader.read_records()
    assert [r.request for r in result.records] == [1, 2, 3]
    assert [r.route for r in result.records] == ["/r1", "/r2", "/r3"]
    assert [r.status for r in result.records] == [201, 202, 203]
    first = result.records[0]
    assert (first.peer, first.peer_port, first.server_port, first.method) == (
        "10.0.0.1",
        5555,
        8000,
        "GET",
    )
    assert first.duration_ns == 1000 and first.queue_wait_ns is None
    assert result.lost == result.torn == 0
    assert reader.read_records().records == []  # the cursor moved on
    assert reader.header().reader_cursor == 3


def test_a_new_file_has_no_records(writer: SpoolWriter) -> None:
    # Zero-filled memory must never look like entry 0.
    assert SpoolReader(writer.path).read_records().records == []


def test_entry_being_written_is_not_read_until_stamped(writer: SpoolWriter) -> None:
    reader = SpoolReader(writer.path)
    seq = publish(writer, 1, stamp=False)
    assert reader.read_records().records == []
    fmt.U64.pack_into(
        writer.mm, writer.record_base + seq * fmt.RECORD_SIZE + fmt.RECORD_SEQ_OFFSET, seq + 1
    )
    fmt.U64.pack_into(writer.mm, fmt.OFF_RING_HEAD, seq + 1)
    assert [r.request for r in reader.read_records().records] == [1]


def test_entry_abandoned_mid_write_is_counted_torn(writer: SpoolWriter) -> None:
    reader = SpoolReader(writer.path)
    publish(writer, 1, stamp=False)  # its writer "died" before the stamp
    publish(writer, 2)  # a later entry was published: the head says 2
    first = reader.read_records(now_ns=10)
    assert first.records == [] and first.torn == 0  # maybe a slow writer: wait
    later = reader.read_records(now_ns=10 + STUCK_ENTRY_TIMEOUT_NS)
    assert later.torn == 1
    assert [r.request for r in later.records] == [2]


def test_an_abandoned_entry_is_given_up_once_half_the_ring_waits_behind_it(
    writer: SpoolWriter,
) -> None:
    """Waiting the full timeout would let the writer lap the records behind the hole."""
    reader = SpoolReader(writer.path)
    publish(writer, 1, stamp=False)
    publish(writer, 2)
    assert reader.read_records(now_ns=10).records == []  # a slow writer, maybe: wait
    for n in range(3, 5):  # ring of 8: four entries from the hole, half the ring
        publish(writer, n)
    result = reader.read_records(now_ns=20)  # long before the timeout
    assert result.torn == 1 and result.lost == 0
    assert [r.request for r in result.records] == [2, 3, 4]


def test_lapped_reader_counts_lost_and_keeps_newest(writer: SpoolWriter) -> None:
    reader = SpoolReader(writer.path)
    for n in range(1, 21):  # ring of 8: 12 are overwritten unread
        publish(writer, n)
    result = reader.read_records()
    assert result.lost == 12
    assert [r.request for r in result.records] == list(range(13, 21))
    assert reader.header().reader_lost == 12
    # A restarted (tracking) reader resumes at the cursor the last one left.
    assert SpoolReader(writer.path).read_records().records == []


def test_untracked_reader_writes_nothing(writer: SpoolWriter) -> None:
    publish(writer, 1)
    before = bytes(writer.mm[: fmt.HEADER_SIZE])
    reader = SpoolReader(writer.path, track=False)
    assert len(reader.read_records().records) == 1
    assert bytes(writer.mm[: fmt.HEADER_SIZE]) == before


def test_scoreboard_shows_busy_slots_only(writer: SpoolWriter) -> None:
    reader = SpoolReader(writer.path)
    assert reader.scoreboard() == []
    slot = writer.acquire_slot()
    fmt.SLOT.pack_into(
        writer.mm,
        writer.slot_offset(slot),
        9,
        123,
        100,
        90,
        77,
        4242,
        3,
        1,
        b"::1",
        "/caf\u00e9/:id".encode(),
    )
    [busy] = reader.scoreboard()
    assert (busy.request, busy.entry_ns, busy.accept_ns, busy.arrival_ns) == (9, 123, 100, 90)
    assert (busy.method, busy.accept_source, busy.peer, busy.path) == (
        "POST",
        "hook",
        "::1",
        "/caf\u00e9/:id",
    )
    writer.release_slot(slot)
    assert reader.scoreboard() == []


def test_accept_events(writer: SpoolWriter) -> None:
    reader = SpoolReader(writer.path)
    for port in range(1000, 1006):  # capacity 4: the two oldest are gone
        writer.write_accept(port * 10, port * 9, port, 8000, 0, b"127.0.0.1")
    events = reader.read_accepts()
    assert [e.peer_port for e in events] == [1002, 1003, 1004, 1005]
    assert events[0].accept_ns == 10020 and events[0].peer == "127.0.0.1"
    assert reader.read_accepts() == []


def test_header_identity(writer: SpoolWriter) -> None:
    h = SpoolReader(writer.path).header()
    assert (h.pid, h.ppid) == (os.getpid(), os.getppid())
    assert (h.slot_count, h.ring_capacity, h.accept_capacity) == (4, 8, 4)
    assert os.path.basename(writer.path) == f"{h.pid}-{h.start_ticks}.spool"
    assert h.start_ticks > 0
    assert h.capacity == 1  # nothing declared, nothing seen yet
    assert list_spools(os.path.dirname(writer.path)) == [writer.path]
    assert os.stat(writer.path).st_mode & 0o777 == 0o600


def _damaged(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda b: b[:100], "shorter than"),
        (lambda b: b"NOTASPOL" + b[8:], "bad magic"),
        (lambda b: b[:8] + struct.pack("<H", 99) + b[10:], "version 99"),
        (lambda b: b[:44] + struct.pack("<I", 128) + b[48:], "slot_size is 128"),
        (lambda b: b[:-1], "file is"),
        (lambda b: b + b"\0" * 192, "file is"),
        (lambda b: b[:48] + struct.pack("<I", 0) + b[52:], "empty geometry"),
    ],
)
def test_damaged_files_give_a_clear_error(
    writer: SpoolWriter, spool_dir: str, mutate: object, message: str
) -> None:
    good = bytes(writer.mm)
    path = _damaged(os.path.join(spool_dir, "bad.spool"), mutate(good))  # type: ignore[operator]
    with pytest.raises(SpoolFormatError, match=message) as info:
        SpoolReader(path)
    assert "bad.spool" in str(info.value)


def test_missing_file(spool_dir: str) -> None:
    with pytest.raises(SpoolFormatError, match="cannot open"):
        SpoolReader(os.path.join(spool_dir, "gone.spool"))


@settings(
    max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None
)
@given(data=st.binary(max_size=4096))
def test_random_bytes_never_crash(spool_dir: str, data: bytes) -> None:
    path = _damaged(os.path.join(spool_dir, "fuzz.spool"), data)
    try:
        reader = SpoolReader(path)
    except SpoolFormatError:
        return
    reader.read_records()
    reader.scoreboard()
    reader.read_accepts()
    reader.close()


@settings(
    max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None
)
@given(
    flips=st.lists(
        st.tuples(st.integers(0, fmt.spool_size(4, 8, 4) - 1), st.integers(0, 255)), max_size=64
    ),
    cut=st.one_of(st.none(), st.integers(0, fmt.spool_size(4, 8, 4))),
)
def test_corrupted_spools_never_crash(
    writer: SpoolWriter, spool_dir: str, flips: list[tuple[int, int]], cut: int | None
) -> None:
    for n in range(1, 6):
        publish(writer, n)
    data = bytearray(writer.mm)
    for at, value in flips:
        data[at] = value
    if cut is not None:
        data = data[:cut]
    path = _damaged(os.path.join(spool_dir, "corrupt.spool"), bytes(data))
    try:
        reader = SpoolReader(path)
    except SpoolFormatError:
        return
    for record in reader.read_records(now_ns=2**62).records:
        assert isinstance(record.route, str) and isinstance(record.method, str)
    reader.scoreboard()
    reader.read_accepts()
    reader.close()
