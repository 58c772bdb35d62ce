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

Why this is safe without locks: each ring entry carries its sequence number plus one in its
last 8 bytes (plus one, so that the zeroes of a new file never look like entry 0). A writer
first overwrites that field with ``INVALID_SEQ``, then writes the body, then writes the
stamp (three separate stores, in that order; x86 and the kernel keep stores to shared memory
in program order). A reader reads the stamp, the body, then the stamp again: the entry is
whole only when both reads give the stamp it expected.
Scoreboard slots are small and rewritten in one store; readers read a slot twice and keep it
only when both copies are equal.
"""

from __future__ import annotations

import struct
from typing import Final

MAGIC: Final = b"WSGIWTCH"
VERSION: Final = 1
SUFFIX: Final = ".spool"

#: Written as the sequence of a ring entry that is being rewritten.
INVALID_SEQ: Final = 0xFFFF_FFFF_FFFF_FFFF

# --- header -------------------------------------------------------------------------------
HEADER_SIZE: Final = 256
#: Identity and geometry, written once when the file is created (magic last).
HEADER_IDENTITY: Final = struct.Struct("<8sHHIQQQIIIIIIII")
#  0 magic 8s | 8 version H | 10 header_size H | 12 pid I | 16 start_ticks Q
# 24 created_wall_ns Q | 32 created_mono_ns Q | 40 slot_count I | 44 slot_size I
# 48 ring_capacity I | 52 record_size I | 56 accept_capacity I | 60 accept_size I
# 64 declared_capacity I | 68 ppid I
OFF_DECLARED_CAPACITY: Final = 64
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
#   0 request Q (0 = idle, else the process's request number) | 8 entry_ns Q
#  16 accept_ns Q | 24 arrival_ns Q | 32 native_tid I | 36 peer_port H | 38 method B
#  39 accept_source B | 40 peer 40s | 80 route 64s (the folded path; a framework's template
#  replaces it in the record at exit)
SLOT_REQUEST: Final = struct.Struct("<Q")  # the first field alone, to mark a slot idle

# --- finished-request record --------------------------------------------------------------
# A record starts with a copy of the request's scoreboard slot (one memory copy at exit
# instead of repacking ten values), followed by what is only known at the end.
RECORD_SIZE: Final = 192
RECORD_EXIT_OFFSET: Final = SLOT_SIZE
RECORD_EXIT: Final = struct.Struct("<QQQQHHHH")
# 144 headers_ns Q (start_response called; 0 never) | 152 exit_ns Q | 160 proxy_wall_ns Q
# (a front proxy's X-Request-Start, wall clock ns; 0 none) | 168 bytes_sent Q
# 176 status H | 178 flags H | 180 server_port H | 182 slot H (0xFFFF: ran without a slot)
# 184 seq + 1 Q (written last; 0 = never written)
RECORD_ROUTE_OFFSET: Final = 80
ROUTE_FIELD: Final = struct.Struct("<64s")
RECORD_SEQ_OFFSET: Final = 184

NO_SLOT: Final = 0xFFFF

# --- accept event -------------------------------------------------------------------------
ACCEPT_SIZE: Final = 80
ACCEPT_BODY: Final = struct.Struct("<QQHHI40s8x")
#  0 accept_ns Q | 8 arrival_ns Q (0 = unknown) | 16 peer_port H | 18 server_port H
# 20 listener_fd I | 24 peer 40s | 64 pad | 72 seq + 1 Q (written last; 0 = never written)
ACCEPT_SEQ_OFFSET: Final = 72

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

for _struct, _size in (
    (SLOT, SLOT_SIZE),
    (ACCEPT_BODY, ACCEPT_SEQ_OFFSET),
    (RECORD_EXIT, RECORD_SEQ_OFFSET - RECORD_EXIT_OFFSET),
):
    assert _struct.size == _size, (_struct.format, _struct.size, _size)
assert HEADER_IDENTITY.size == 72


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
