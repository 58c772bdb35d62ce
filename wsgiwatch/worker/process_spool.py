"""The one spool of this process, shared by every WSGIWatch instance and the accept hook.

Opened lazily on first use, so a server that builds the app in its master and then forks
(gunicorn ``--preload``) gives each worker its own file: after a fork the child forgets the
parent's spool and opens its own on its first request.

A worker touches no file in the spool directory but its own: spools of dead processes are
the sidecar's to drain and remove. (Opening other files from the app's process is how a
FIFO planted there could hang it.)
"""

from __future__ import annotations

import logging
import os
import threading

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
        _writers[directory] = writer
        return writer


def _forget_after_fork() -> None:
    # The child must not write into its parent's file. The mappings are simply dropped
    # (unmapped in the child only); the files stay, they are the parent's.
    global _lock
    _writers.clear()
    _lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
