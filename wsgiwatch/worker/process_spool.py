"""The one spool of this process, shared by every WSGIWatch instance and the accept hook.

Opened lazily on first use, so a server that builds the app in its master and then forks
(gunicorn ``--preload``) gives each worker its own file: after a fork the child forgets the
parent's spool and opens its own on its first request.
"""

from __future__ import annotations

import logging
import os
import threading
import time

from wsgiwatch.errors import SpoolFormatError
from wsgiwatch.kernel.procfs import process_start_ticks
from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.reader import SpoolReader, list_spools
from wsgiwatch.spool.writer import (
    DEFAULT_ACCEPTS,
    DEFAULT_RING,
    DEFAULT_SLOTS,
    SpoolWriter,
    default_spool_dir,
    open_spool,
)

logger = logging.getLogger("wsgiwatch")

#: Spools of dead processes are removed by a newly starting worker only after this long,
#: so a sidecar has had time to drain them.
STALE_SPOOL_AGE_S = 300.0

# directory -> its writer, or None when it could not be opened (we then stay quiet).
_writers: dict[str, SpoolWriter | None] = {}
_lock = threading.Lock()


def resolve_dir(spool_dir: str | None) -> str:
    return spool_dir or os.environ.get("WSGIWATCH_DIR") or default_spool_dir()


Geometry = tuple[int, int, int]  # scoreboard slots, ring records, accept events
DEFAULT_GEOMETRY: Geometry = (DEFAULT_SLOTS, DEFAULT_RING, DEFAULT_ACCEPTS)
# directory -> the geometry a WSGIWatch asked for, so that an accept hook opening the spool
# first (at worker start, before any request) still makes it the size the app wants.
_geometry: dict[str, Geometry] = {}


def request_geometry(directory: str, geometry: Geometry) -> None:
    _geometry[directory] = geometry


def writer_for(directory: str) -> SpoolWriter | None:
    """This process's writer for ``directory``; None (logged once) when it cannot exist."""
    try:
        return _writers[directory]
    except KeyError:
        pass
    with _lock:
        if directory in _writers:
            return _writers[directory]
        slots, ring, accepts = _geometry.get(directory, DEFAULT_GEOMETRY)
        writer: SpoolWriter | None
        try:
            writer = open_spool(
                directory, slot_count=slots, ring_capacity=ring, accept_capacity=accepts
            )
        except Exception as exc:  # any failure: serve on, unrecorded, and say so once
            logger.warning(
                "wsgiwatch: recording disabled in pid %d, cannot open a spool in %s: %s",
                os.getpid(),
                directory,
                exc,
            )
            writer = None
        else:
            remove_stale_spools(directory)
        _writers[directory] = writer
        return writer


def remove_stale_spools(directory: str, *, now: float | None = None) -> int:
    """Delete spool files of processes that are gone and that nobody needs; returns count.

    A process is gone when its pid does not exist or now has another start time. Its file
    is needed until a sidecar has drained it (the sidecar then removes it itself); a file
    no reader ever followed is removed once it is older than ``STALE_SPOOL_AGE_S``, so files
    do not pile up without a sidecar (prometheus_client multiprocess mode's old sore).
    File times are no guide: writes through a shared mapping need not update them.
    """
    now_ns = int((time.time() if now is None else now) * 1e9)
    removed = 0
    for path in list_spools(directory):
        name = os.path.basename(path)
        try:
            pid_text, ticks_text = name[: -len(fmt.SUFFIX)].split("-", 1)
            pid, ticks = int(pid_text), int(ticks_text)
        except ValueError:
            continue
        if ticks and process_start_ticks(pid) == ticks:
            continue  # alive
        try:
            with SpoolReader(path, track=False) as reader:
                h = reader.header()
            drained = h.reader_cursor >= h.ring_head and h.reader_cursor > 0
            stale = drained or (
                h.reader_cursor == 0 and now_ns - h.created_wall_ns > STALE_SPOOL_AGE_S * 1e9
            )
        except SpoolFormatError:
            # Damaged, or its process died creating it: nobody writes it any more, so
            # here the file's own time does tell its age.
            try:
                stale = now_ns / 1e9 - os.stat(path).st_mtime > STALE_SPOOL_AGE_S
            except OSError:
                continue
        if stale:
            try:
                os.unlink(path)
                removed += 1
            except OSError:
                pass  # another process removed it first
    return removed


def _forget_after_fork() -> None:
    # The child must not write into its parent's file. The mappings are simply dropped
    # (unmapped in the child only); the files stay, they are the parent's.
    global _lock
    _writers.clear()
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
