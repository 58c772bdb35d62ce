"""The reader's batch decoding (whole copies unpacked at once, route and peer text cached;
in C by ``wsgiwatch.spool._batch`` when built, else in Python) against a plain twin: one
entry at a time, field by field, as the format document reads.

Whatever the ring's bytes (stamps of every kind, bodies of random bytes, invalid UTF-8,
embedded NULs), the reader must return the same records, and count the same losses and torn
entries, as the twin, with either decoder; and its text cache must never change a decoded
string.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool import record_batch
from wsgiwatch.spool.reader import STUCK_ENTRY_TIMEOUT_NS, SpoolReader
from wsgiwatch.spool.record_batch import RECORD_ROW, decode_block, decode_rows
from wsgiwatch.spool.records import Record
from wsgiwatch.spool.writer import open_spool

SLOTS, RING, ACCEPTS = 4, 8, 4
RECORD_BASE = fmt.HEADER_SIZE + SLOTS * fmt.SLOT_SIZE
HEAD = 11  # records the pristine spool holds (the ring lapped once)
NOW = 2**62
#: The decoders: C (when built: it is wherever a compiler was) and Python.
DECODERS = ["c", "python"]


@pytest.fixture(params=DECODERS)
def decoder(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    if request.param == "python":
        monkeypatch.setattr(record_batch, "batch", None)
    else:
        assert record_batch.batch is not None, "the C decoder was not built (no compiler?)"
    return str(request.param)


def twin_decode(seq: int, pid: int, raw: bytes, at: int) -> Record:
    """One entry, field by field (what the reader did before it decoded in batches)."""
    (request, entry, accept, arrival, tid, peer_port, method, source, peer, route) = (
        fmt.SLOT.unpack_from(raw, at)
    )
    (headers, exit_, proxy, nbytes, status, flags, server_port, slot) = fmt.RECORD_EXIT.unpack_from(
        raw, at + fmt.RECORD_EXIT_OFFSET
    )
    return Record(
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
        method=fmt.METHODS[method] if method < len(fmt.METHODS) else "OTHER",
        accept_source=(
            fmt.ACCEPT_SOURCES[source] if source < len(fmt.ACCEPT_SOURCES) else "unknown"
        ),
        peer=peer.rstrip(b"\0").decode("ascii", "replace"),
        route=route.rstrip(b"\0").decode("utf-8", "replace"),
    )


class TwinReader:
    """The ring walk, one entry at a time, on a file that does not change (both copies
    the same), with the reader's rules for stamps and entries claimed but unwritten."""

    def __init__(self, ring: bytes, pid: int, cursor: int) -> None:
        self.ring, self.pid, self.cursor = ring, pid, cursor
        self.stuck_at, self.stuck_since = -1, 0

    def read(self, head: int, now: int) -> tuple[list[Record], int, int]:
        out: list[Record] = []
        lost = torn = 0
        i = self.cursor
        while i < head:
            at = (i % RING) * fmt.RECORD_SIZE
            stamp = fmt.U64.unpack_from(self.ring, at + fmt.RECORD_SEQ_OFFSET)[0]
            if stamp == i + 1:
                out.append(twin_decode(i, self.pid, self.ring, at))
                i += 1
                continue
            if stamp != fmt.INVALID_SEQ and stamp > i + 1 and (stamp - 1) % RING == i % RING:
                lost += 1
                i += 1
                continue
            if self.stuck_at != i:
                self.stuck_at, self.stuck_since = i, now
                break
            if now - self.stuck_since < STUCK_ENTRY_TIMEOUT_NS and head - i < RING // 2:
                break
            torn += 1
            i += 1
        self.cursor = i
        return out, lost, torn


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    directory = tmp_path_factory.mktemp("batch")
    directory.chmod(0o700)
    writer = open_spool(str(directory), slot_count=SLOTS, ring_capacity=RING, accept_capacity=4)
    try:
        mm = writer.mm
        for n in range(HEAD):
            seq = next(writer.record_seq)
            off = writer.record_base + (seq % RING) * fmt.RECORD_SIZE
            mm[off : off + fmt.SLOT_SIZE] = fmt.SLOT.pack(
                n + 1, 10 + n, 5 + n, 6 + n, 77, 40000 + n, 1, 0, b"127.0.0.1", b"/batch/:id"
            )
            fmt.RECORD_EXIT.pack_into(
                mm, off + fmt.RECORD_EXIT_OFFSET, 11, 20 + n, 0, 9, 200, 0, 80, 0
            )
            fmt.U64.pack_into(mm, off + fmt.RECORD_SEQ_OFFSET, seq + 1)
            fmt.U64.pack_into(mm, fmt.OFF_RING_HEAD, seq + 1)
        return bytes(mm)
    finally:
        writer.close()


@pytest.fixture
def batch_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("batchfiles")
    directory.chmod(0o700)
    yield str(directory)


def _stamp_choice(seq_of_slot: int) -> st.SearchStrategy[int | None]:
    """None keeps the entry's stamp; else a stamp of every kind the reader tells apart."""
    return st.one_of(
        st.none(),
        st.sampled_from([0, fmt.INVALID_SEQ, seq_of_slot + RING + 1, seq_of_slot + 2 * RING + 1]),
        st.integers(0, 2**64 - 1),
    )


texts = st.one_of(
    st.binary(max_size=64),
    st.sampled_from([b"/caf\xc3\xa9", b"\xff\xfe/bad", b"/a\0b", b"\0" * 64, b"x" * 64]),
)
entry = st.tuples(
    st.one_of(st.none(), st.binary(min_size=fmt.SLOT_SIZE, max_size=fmt.SLOT_SIZE)),
    st.one_of(st.none(), st.binary(min_size=40, max_size=40)),
    texts,
    texts,
    st.integers(0, 255),
    st.integers(0, 255),
)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    entries=st.lists(entry, min_size=RING, max_size=RING),
    stamps=st.tuples(*(_stamp_choice(k) for k in range(RING))),
)
def test_the_reader_reads_what_its_one_entry_twin_reads(
    decoder: str,
    pristine: bytes,
    batch_dir: str,
    entries: list[tuple[bytes | None, bytes | None, bytes, bytes, int, int]],
    stamps: tuple[int | None, ...],
) -> None:
    data = bytearray(pristine)
    for k, (body, exit_part, peer, route, method, source) in enumerate(entries):
        at = RECORD_BASE + k * fmt.RECORD_SIZE
        if body is not None:
            data[at : at + fmt.SLOT_SIZE] = body
        else:  # keep the fields, change the texts and codes
            data[at + 32 + 6] = method
            data[at + 32 + 7] = source
            data[at + 40 : at + 80] = peer[:40].ljust(40, b"\0")
            data[at + 80 : at + 144] = route.ljust(64, b"\0")
        if exit_part is not None:
            data[at + fmt.RECORD_EXIT_OFFSET : at + fmt.RECORD_SEQ_OFFSET] = exit_part
        if stamps[k] is not None:
            fmt.U64.pack_into(data, at + fmt.RECORD_SEQ_OFFSET, stamps[k])
    path = os.path.join(batch_dir, "batch.spool")
    with open(path, "wb") as f:
        f.write(bytes(data))
    ring = bytes(data[RECORD_BASE : RECORD_BASE + RING * fmt.RECORD_SIZE])
    with SpoolReader(path, track=False) as reader:
        twin = TwinReader(ring, reader.pid, reader.cursor)
        for _ in range(3):  # stuck entries: first seen, waited for, then given up
            got = reader.read_records(now_ns=NOW)
            want = twin.read(HEAD, NOW)
            assert (got.records, got.lost, got.torn) == want
            assert reader.cursor == twin.cursor


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    raw=st.binary(min_size=3 * fmt.RECORD_SIZE, max_size=3 * fmt.RECORD_SIZE),
    seq=st.integers(0, 2**64 - 4),
)
def test_any_bytes_decode_as_the_twin_decodes_them(decoder: str, raw: bytes, seq: int) -> None:
    want = [twin_decode(seq + k, 42, raw, k * fmt.RECORD_SIZE) for k in range(3)]
    for _ in range(2):  # the second time from the text cache
        got = decode_block(42, seq, raw)
        assert got == want
        assert all(type(r) is Record for r in got)
    rows = [(seq + k, RECORD_ROW.unpack_from(raw, k * fmt.RECORD_SIZE)) for k in range(3)]
    assert decode_rows(42, rows) == want


def test_a_partial_entry_at_the_end_is_not_decoded(decoder: str) -> None:
    raw = bytes(2 * fmt.RECORD_SIZE + 100)
    assert [r.seq for r in decode_block(1, 5, raw)] == [5, 6]


def test_the_text_cache_is_bounded_and_forgets_nothing_it_should_not(
    decoder: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past its size the cache starts over: a flood of distinct routes costs a decode each,
    never memory, and every route still reads right."""
    monkeypatch.setattr(record_batch, "TEXT_CACHE_ENTRIES", 16)
    monkeypatch.setattr(record_batch, "_routes", {})
    body = bytearray(fmt.RECORD_SIZE)
    for n in range(100):
        route = f"/flood/{n}".encode()
        body[80:144] = route.ljust(64, b"\0")
        (record,) = decode_block(1, n, bytes(body))
        assert record.route == f"/flood/{n}"
        assert len(record_batch._routes) <= 16
