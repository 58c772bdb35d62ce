"""docs/spool-format.md must state the offsets that wsgiwatch/spool/layout.py uses."""

from __future__ import annotations

import re
import struct
from pathlib import Path

from wsgiwatch.spool import layout as fmt

DOC = Path(__file__).resolve().parents[2] / "docs" / "spool-format.md"


def field_offsets(fmt_string: str, base: int = 0) -> list[int]:
    """Offsets of the fields of a struct format, padding skipped."""
    offsets = []
    pos = base
    for count, code in re.findall(r"(\d*)([a-zA-Z?])", fmt_string.lstrip("<>=!@")):
        n = int(count) if count else 1
        size = struct.calcsize("<" + code)
        if code == "x":
            pos += n
        elif code == "s":
            offsets.append(pos)
            pos += n
        else:
            for _ in range(n):
                offsets.append(pos)
                pos += size
    return offsets


def doc_table(heading: str) -> list[int]:
    text = DOC.read_text()
    section = text.split(f"## {heading}", 1)[1].split("\n## ", 1)[0]
    return [int(m) for m in re.findall(r"^\| (\d+) \|", section, re.MULTILINE)]


def test_header_offsets() -> None:
    documented = doc_table("Header (256 bytes)")
    expected = [
        *field_offsets(fmt.HEADER_IDENTITY.format),
        fmt.OFF_FLAGS,
        fmt.OFF_SLOT_HIGH_WATER,
        fmt.OFF_RING_HEAD,
        fmt.OFF_ACCEPT_HEAD,
        fmt.OFF_SLOTS_EXHAUSTED,
        fmt.OFF_WRITE_ERRORS,
        fmt.OFF_READER_CURSOR,
        fmt.OFF_READER_LOST,
        fmt.OFF_SERVER,
        fmt.OFF_TIMES_REJECTED,
        fmt.OFF_SPOOLS_LOST,
        fmt.OFF_RECORDS_LOST_WITH_SPOOL,
        fmt.OFF_IDENTITY_UNTIL,
        fmt.OFF_RESERVED,
    ]
    assert documented == expected
    assert fmt.OFF_SERVER + fmt.SERVER_FIELD.size == fmt.OFF_TIMES_REJECTED
    assert fmt.OFF_RESERVED + 64 == fmt.HEADER_SIZE


def test_slot_offsets() -> None:
    assert doc_table("Scoreboard slot (144 bytes)") == field_offsets(fmt.SLOT.format)
    assert fmt.SLOT.size == fmt.SLOT_SIZE == 144


def test_record_offsets() -> None:
    documented = doc_table("Finished-request record (192 bytes)")
    expected = [
        0,
        *field_offsets(fmt.RECORD_EXIT.format, fmt.RECORD_EXIT_OFFSET),
        fmt.RECORD_SEQ_OFFSET,
    ]
    assert documented == expected
    assert fmt.RECORD_SEQ_OFFSET + 8 == fmt.RECORD_SIZE == 192
    assert field_offsets(fmt.SLOT.format)[-1] == fmt.RECORD_ROUTE_OFFSET


def test_accept_offsets() -> None:
    documented = doc_table("Accept event (80 bytes)")
    body = field_offsets(fmt.ACCEPT_BODY.format)
    # The 8 reserved bytes before the stamp are a pad in the struct, a row in the doc.
    assert documented == [*body, 64, fmt.ACCEPT_SEQ_OFFSET]
    assert fmt.ACCEPT_SEQ_OFFSET + 8 == fmt.ACCEPT_SIZE == 80


def test_default_size_stated() -> None:
    size = fmt.spool_size(64, 4096, 1024)
    assert f"{size:,}" in DOC.read_text()


def test_named_fields_are_where_the_struct_formats_put_them() -> None:
    """layout.field_layout (what the C header is generated from) against this file's own
    reading of the formats."""
    for layout, names, base in (
        (fmt.HEADER_IDENTITY, fmt.HEADER_IDENTITY_FIELDS, 0),
        (fmt.SLOT, fmt.SLOT_FIELDS, 0),
        (fmt.RECORD_EXIT, fmt.RECORD_EXIT_FIELDS, fmt.RECORD_EXIT_OFFSET),
        (fmt.ACCEPT_BODY, fmt.ACCEPT_FIELDS, 0),
    ):
        named = fmt.field_layout(layout, names, base)
        assert [offset for offset, _ in named.values()] == field_offsets(layout.format, base)
    assert fmt.field_layout(fmt.SLOT, fmt.SLOT_FIELDS)["route"] == (
        fmt.RECORD_ROUTE_OFFSET,
        fmt.ROUTE_FIELD.size,
    )
