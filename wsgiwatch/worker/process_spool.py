"""The one spool of this process, shared by every WSGIWatch instance and the accept hook.

Opened lazily on first use, so a server that builds the app in its master and then forks
(gunicorn ``--preload``) gives each worker its own file: after a fork the child forgets the
parent's spool and opens its own on its first request.

A worker touches no file in the spool directory but its own: spools of dead processes are
the sidecar's to drain and remove. (Opening other files from the app's process is how a
FIFO planted there could hang it.)

Its own file can be lost under it: removed (alone, or with the whole directory) or
truncated; :mod:`.spool_check` notices, and the next request opens a new file here, whose
header counts what was lost (``spools_lost``, ``records_lost_with_spool``).
"""

from __future__ import annotations

import logging
import os
import threading

from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.writer import (
    DEFAULT_ACCEPTS,
    DEFAULT_RING,
    DEFAULT_SLOTS,
    SpoolWriter,
    default_spool_dir,
    open_spool,
)

logger = logging.getLogger("wsgiwatch")

# directory -> its writer, or None when it could not be opened (we then stay quiet).
_writers: dict[str, SpoolWriter | None] = {}
_lock = threading.Lock()
# directory -> (spools lost, records lost with them) in this process, written into each
# new spool's header.
_losses: dict[str, tuple[int, int]] = {}


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
                "worker.recording_disabled: pid %d cannot open a spool in %s: %s",
                os.getpid(),
                directory,
                exc,
            )
            writer = None
        else:
            spools, records = _losses.get(directory, (0, 0))
            if spools:
                writer.set_counter(fmt.OFF_SPOOLS_LOST, spools)
                writer.set_counter(fmt.OFF_RECORDS_LOST_WITH_SPOOL, records)
        _writers[directory] = writer
        return writer


def forget_writer(directory: str, writer: SpoolWriter) -> bool:
    """Stop handing out ``writer`` for ``directory`` (its file is lost); the next
    :func:`writer_for` opens a new one. False when another thread did it first."""
    with _lock:
        if _writers.get(directory) is not writer:
            return False
        del _writers[directory]
        return True


def count_loss(directory: str, *, spools: int = 0, records: int = 0) -> None:
    """Add to what this process lost in ``directory``: kept for the next spool's header,
    and written into the current one's now."""
    lost_spools, lost_records = _losses.get(directory, (0, 0))
    lost_spools += spools
    lost_records += records
    _losses[directory] = (lost_spools, lost_records)
    writer = _writers.get(directory)
    if writer is not None:
        writer.set_counter(fmt.OFF_SPOOLS_LOST, lost_spools)
        writer.set_counter(fmt.OFF_RECORDS_LOST_WITH_SPOOL, lost_records)


def _forget_after_fork() -> None:
    # The child must not write into its parent's file. The mappings are simply dropped
    # (unmapped in the child only); the files stay, they are the parent's.
    global _lock
    _writers.clear()
    _losses.clear()
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
