"""Noticing that this process's spool file was removed (alone or with its directory),
replaced or truncated under it, and recording on in a new one, with the loss counted.

Both paths call :func:`check_spool` at the end of a request whose exit time has passed the
writer's ``next_check_ns`` (so at most once a second, with the clock already read: one
``stat``), and the C path also at the start of a request once its SIGBUS handler has caught
a write into a truncated spool (and mapped zeroes there). A lost spool is retired: dropped
from ``settings.ready``, so the next request opens a new file. A second later it is settled:
every request that started on it and that its reader had not read by then is counted in the
new file's header (``records_lost_with_spool``), and it is unmapped. Waiting that second
lets the requests that were already past the lookup of the spool take their numbers on it,
so none is lost uncounted; they finish into a mapping nobody reads, or into nothing once it
is unmapped.
"""

from __future__ import annotations

import logging
import os

from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.writer import SpoolWriter
from wsgiwatch.worker.process_spool import count_loss, forget_writer
from wsgiwatch.worker.settings import ready

logger = logging.getLogger("wsgiwatch")

#: How often a process looks at its spool file, in ns of CLOCK_MONOTONIC.
CHECK_INTERVAL_NS = 1_000_000_000

# Lost spools not settled yet: (directory, writer, when retired, its reader's last cursor).
_retired: list[tuple[str, SpoolWriter, int, int]] = []
# writer -> its reader's cursor at the last check (a truncated file's header is gone).
_cursors: dict[int, int] = {}


def check_spool(spool: object, now_ns: int) -> None:
    """``spool``: this process's SpoolWriter, or the accelerator's Spool inside one."""
    for directory, writer in list(ready.items()):
        if writer is not None and (writer is spool or writer.fast is spool):
            _check(directory, writer, now_ns)
            break
    if _retired:
        _settle(now_ns)


def spool_is_lost(writer: SpoolWriter) -> bool:
    """Whether ``writer``'s file is gone (removed, alone or with its directory), replaced
    by another file, or truncated; or a write into it faulted (the C path)."""
    if writer.fast is not None and writer.fast.lost:
        return True
    try:
        st = os.stat(writer.path)
    except OSError:
        return True
    return st.st_ino != writer.inode or st.st_size < writer.size


def _check(directory: str, writer: SpoolWriter, now_ns: int) -> None:
    writer.next_check_ns = now_ns + CHECK_INTERVAL_NS
    if writer.fast is not None:
        writer.fast.next_check_ns = writer.next_check_ns
    if not spool_is_lost(writer):
        cursor = _reader_cursor(writer)
        if cursor is not None:
            _cursors[id(writer)] = cursor
        return
    if not forget_writer(directory, writer):
        return  # another thread retired it
    if ready.get(directory) is writer:
        del ready[directory]
    cursor = _reader_cursor(writer)
    if cursor is None:
        cursor = _cursors.get(id(writer), 0)
    _retired.append((directory, writer, now_ns, cursor))
    count_loss(directory, spools=1)
    try:  # a truncated file of ours goes, so readers see a new file, not this one regrown
        if os.stat(writer.path).st_ino == writer.inode:
            os.unlink(writer.path)
    except OSError:
        pass  # removed already, alone or with its directory
    logger.warning(
        "worker.spool_lost: pid %d: the spool %s was removed or truncated under it; "
        "recording goes on in a new file, and what was lost is counted there",
        os.getpid(),
        writer.path,
    )


def _settle(now_ns: int) -> None:
    for entry in list(_retired):
        directory, writer, retired_ns, cursor = entry
        if now_ns - retired_ns < CHECK_INTERVAL_NS:
            continue
        _retired.remove(entry)
        _cursors.pop(id(writer), None)
        started = next(writer.request_numbers) - 1  # one atomic step (the number is spent)
        count_loss(directory, records=max(0, started - cursor))
        writer.unmap()


def _reader_cursor(writer: SpoolWriter) -> int | None:
    """The reader's cursor in the spool's header, or None when the header is gone."""
    mm = writer.mm
    if mm.closed or mm[: len(fmt.MAGIC)] != fmt.MAGIC:
        return None
    cursor: int = fmt.U64.unpack_from(mm, fmt.OFF_READER_CURSOR)[0]
    return cursor


def _forget_after_fork() -> None:
    _retired.clear()  # the parent's; the child never wrote them
    _cursors.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
