"""The spool file format, shared by the writer (in each worker) and the reader (the sidecar).

One spool file per worker process, named ``<pid>-<start_ticks>.spool`` in the spool
directory, so a recycled pid never collides with a dead worker's file. The file has a fixed
size and is mapped into memory by both sides; all integers are little-endian. Its layout is
documented byte by byte in ``docs/spool-format.md``; the offsets below are the truth and the
tests check the document against them.

    header    HEADER_SIZE bytes   identity, geometry, counters
    slots     slot_count x SLOT_SIZE        scoreboard: one slot per request in flight
    records   ring_capacity x RECORD_SIZE   finished requests, a ring
    accepts   accept_capacity x ACCEPT_SIZE accept events from the opt-in accept hook, a ring

No locks between processes: each ring entry carries its sequence number + 1 in its last 8
bytes, written last, and a reader checks it before and after reading the body. The whole
protocol is described once, in docs/spool-format.md ("Writing and reading without locks");
``SpoolWriter._publish`` and ``spool_commit()`` in ``wsgiwatch/worker/_speedups.c``
implement it, and tests/worker/test_speedups.py holds the two to the same bytes.

The field names below (``*_FIELDS``) give every field's offset and size
(:func:`field_layout`); ``wsgiwatch/worker/_layout.h`` is generated from them for the C
writer (``python -m wsgiwatch.worker.layout_header``) and a test checks it is current.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Final


def field_layout(
    layout: struct.Struct, names: Sequence[str], base: int = 0
) -> dict[str, tuple[int, int]]:
    """name -> (offset, size) of each field of a little-endian struct format; pad bytes
    (``x``) have no name. ``base`` is added to every offset."""
    fields: list[tuple[int, int]] = []
    pos = base
    code_text = layout.format.lstrip("<")
    count = ""
    for char in code_text:
        if char.isdigit():
            count += char
            continue
        n = int(count) if count else 1
        count = ""
        size = struct.calcsize("<" + char)
        if char == "x":
            pos += n
        elif char == "s":
            fields.append((pos, n))
            pos += n
        else:
            for _ in range(n):
                fields.append((pos, size))
                pos += size
    if len(fields) != len(names):
        raise ValueError(f"{layout.format} has {len(fields)} fields, named {len(names)}")
    return dict(zip(names, fields, strict=True))


MAGIC: Final = b"WSGIWTCH"
VERSION: Final = 1
SUFFIX: Final = ".spool"

#: Written as the sequence of a ring entry that is being rewritten.
INVALID_SEQ: Final = 0xFFFF_FFFF_FFFF_FFFF

# --- header -------------------------------------------------------------------------------
HEADER_SIZE: Final = 256
#: Identity and geometry, written once when the file is created (magic last).
HEADER_IDENTITY: Final = struct.Struct("<8sHHIQQQIIIIIIII")
HEADER_IDENTITY_FIELDS: Final = (
    "magic",
    "version",
    "header_size",
    "pid",
    "start_ticks",
    "created_wall_ns",
    "created_mono_ns",
    "slot_count",
    "slot_size",
    "ring_capacity",
    "record_size",
    "accept_capacity",
    "accept_size",
    "declared_capacity",
    "ppid",
)
OFF_DECLARED_CAPACITY: Final = field_layout(HEADER_IDENTITY, HEADER_IDENTITY_FIELDS)[
    "declared_capacity"
][0]
OFF_FLAGS: Final = 72  # I: HEADER_FLAG_* bits
OFF_SLOT_HIGH_WATER: Final = 76  # I: slots ever used = most requests in flight at once
OFF_RING_HEAD: Final = 80  # Q: a hint: 1 + the highest record sequence published
OFF_ACCEPT_HEAD: Final = 88  # Q: the same for accept events
OFF_SLOTS_EXHAUSTED: Final = 96  # Q: requests not put on the scoreboard (all slots in use)
OFF_WRITE_ERRORS: Final = 104  # Q: records lost to an error inside wsgiwatch
OFF_READER_CURSOR: Final = 112  # Q: written by the reader: next sequence it will read
OFF_READER_LOST: Final = 120  # Q: written by the reader: records overwritten before it read them
OFF_SERVER: Final = 128  # 32s: SERVER_SOFTWARE of the first request, for advice
SERVER_FIELD: Final = struct.Struct("<32s")
OFF_TIMES_REJECTED: Final = 160  # Q: accept or proxy times rejected as implausible
OFF_SPOOLS_LOST: Final = 168  # Q: earlier spools of this process removed or truncated under it
OFF_RECORDS_LOST_WITH_SPOOL: Final = 176  # Q: records unread in those when they were replaced
#: Q: written by the sidecar: until when (CLOCK_MONOTONIC ns) the worker reads the peer port
#: of each request's connection from its socket (uWSGI passes none), because the kernel
#: shows connections waiting in this worker's listen backlog; 0: not wanted. Written with
#: its lowest bit set, so the first byte alone (little-endian) says whether it is set.
OFF_IDENTITY_UNTIL: Final = 184
OFF_RESERVED: Final = 192  # zeroes up to HEADER_SIZE
U32: Final = struct.Struct("<I")
U64: Final = struct.Struct("<Q")

HEADER_FLAG_ACCEPT_HOOK: Final = 1  # an accept hook writes accept events into this spool
HEADER_FLAG_MULTITHREAD: Final = 2  # wsgi.multithread was true
HEADER_FLAG_MULTIPROCESS: Final = 4  # wsgi.multiprocess was true
HEADER_FLAG_COOPERATIVE: Final = 8  # greenlets: gevent or eventlet patched the threading module
HEADER_FLAG_ACCELERATED: Final = 16  # the C accelerator writes this spool's records

# --- scoreboard slot ----------------------------------------------------------------------
SLOT_SIZE: Final = 144
SLOT: Final = struct.Struct("<QQQQIHBB40s64s")
#: request: 0 = idle, else the process's request number; route: the folded path (a
#: framework's template replaces it in the record at exit).
SLOT_FIELDS: Final = (
    "request",
    "entry_ns",
    "accept_ns",
    "arrival_ns",
    "native_tid",
    "peer_port",
    "method",
    "accept_source",
    "peer",
    "route",
)
SLOT_REQUEST: Final = struct.Struct("<Q")  # the first field alone, to mark a slot idle

# --- finished-request record --------------------------------------------------------------
# A record starts with a copy of the request's scoreboard slot (one memory copy at exit
# instead of repacking ten values), followed by what is only known at the end.
RECORD_SIZE: Final = 192
RECORD_EXIT_OFFSET: Final = SLOT_SIZE
RECORD_EXIT: Final = struct.Struct("<QQQQHHHH")
#: headers_ns: start_response called (0: never); proxy_wall_ns: a front proxy's
#: X-Request-Start, wall clock ns (0: none); slot: 0xFFFF when it ran without one. Then at
#: RECORD_SEQ_OFFSET the stamp, seq + 1 (written last; 0 = never written).
RECORD_EXIT_FIELDS: Final = (
    "headers_ns",
    "exit_ns",
    "proxy_wall_ns",
    "bytes_sent",
    "status",
    "flags",
    "server_port",
    "slot",
)
RECORD_ROUTE_OFFSET: Final = field_layout(SLOT, SLOT_FIELDS)["route"][0]
ROUTE_FIELD: Final = struct.Struct("<64s")
RECORD_SEQ_OFFSET: Final = RECORD_EXIT_OFFSET + RECORD_EXIT.size

NO_SLOT: Final = 0xFFFF

# --- accept event -------------------------------------------------------------------------
ACCEPT_SIZE: Final = 80
ACCEPT_BODY: Final = struct.Struct("<QQHHI40s8x")
#: arrival_ns: 0 = unknown. Then 8 bytes of pad, and at ACCEPT_SEQ_OFFSET the stamp.
ACCEPT_FIELDS: Final = (
    "accept_ns",
    "arrival_ns",
    "peer_port",
    "server_port",
    "listener_fd",
    "peer",
)
ACCEPT_SEQ_OFFSET: Final = ACCEPT_BODY.size

# --- enumerations -------------------------------------------------------------------------
METHODS: Final = (
    "OTHER",
    "GET",
    "HEAD",
    "POST",
    "PUT",
    "DELETE",
    "PATCH",
    "OPTIONS",
    "CONNECT",
    "TRACE",
)
METHOD_CODES: Final = {name: code for code, name in enumerate(METHODS) if code}

# Where a record's accept_ns came from.
SOURCE_NONE: Final = 0
SOURCE_HOOK: Final = 1  # the opt-in accept hook, exact
SOURCE_MOD_WSGI: Final = 2  # Apache mod_wsgi's request_start
ACCEPT_SOURCES: Final = ("none", "hook", "mod_wsgi")

# Record flags.
FLAG_APP_RAISED: Final = 1  # the app (or its iterable) raised
FLAG_CLIENT_GONE: Final = 2  # the server stopped iterating early: the client went away
FLAG_FILE_WRAPPER: Final = 4  # returned through wsgi.file_wrapper
FLAG_ROUTE_TEMPLATE: Final = 8  # route is a framework's template, not a folded path
FLAG_REUSED_CONNECTION: Final = 16  # not the first request on its connection (keep-alive)
FLAG_ARRIVAL_TCP_INFO: Final = 32  # arrival_ns read from TCP_INFO when accepted
FLAG_NO_CLOSE_SEEN: Final = 64  # exit is when the app returned: close() could not be watched
FLAG_ARRIVAL_SERVER: Final = 128  # arrival_ns is when the server had the request complete
FLAG_PEER_FROM_SOCKET: Final = 256  # peer_port read from the connection's socket (getpeername)

assert SLOT.size == SLOT_SIZE, (SLOT.size, SLOT_SIZE)
assert RECORD_SEQ_OFFSET + 8 == RECORD_SIZE, RECORD_SEQ_OFFSET
assert ACCEPT_SEQ_OFFSET + 8 == ACCEPT_SIZE, ACCEPT_SEQ_OFFSET
assert HEADER_IDENTITY.size == OFF_FLAGS, HEADER_IDENTITY.size


def spool_size(slot_count: int, ring_capacity: int, accept_capacity: int) -> int:
    """Bytes in a spool file of this geometry."""
    return (
        HEADER_SIZE
        + slot_count * SLOT_SIZE
        + ring_capacity * RECORD_SIZE
        + accept_capacity * ACCEPT_SIZE
    )


def spool_name(pid: int, start_ticks: int) -> str:
    return f"{pid}-{start_ticks}{SUFFIX}"
