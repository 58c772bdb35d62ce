"""Creating a worker's spool file and writing into it.

Per request the middleware only stores into the mmap (from C, or with ``struct.pack_into``
on the pure-Python path): no syscall. Everything that can fail (creating the directory,
reserving the file's pages) happens once, in :func:`open_spool`, which raises ``OSError``;
the middleware catches it and serves on: the app must never notice a broken spool.
"""

from __future__ import annotations

import itertools
import logging
import mmap
import os
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from wsgiwatch.kernel.procfs import process_start_ticks
from wsgiwatch.spool import layout as fmt
from wsgiwatch.worker.accelerator import speedups

logger = logging.getLogger("wsgiwatch")

DEFAULT_SLOTS = 64
DEFAULT_RING = 4096
DEFAULT_ACCEPTS = 1024

_INVALID_STAMP = fmt.U64.pack(fmt.INVALID_SEQ)
_U64_pack = fmt.U64.pack_into


def default_spool_dir() -> str:
    """A per-user directory in shared memory when the machine has it, else in the temp dir."""
    uid = os.getuid() if hasattr(os, "getuid") else 0
    for base in ("/dev/shm", os.environ.get("XDG_RUNTIME_DIR") or ""):
        if base and os.path.isdir(base) and os.access(base, os.W_OK | os.X_OK):
            return os.path.join(base, f"wsgiwatch-{uid}")
    return os.path.join(tempfile.gettempdir(), f"wsgiwatch-{uid}")


def ensure_private_dir(path: str) -> None:
    """Create ``path`` with mode 0700, or check that an existing one is ours and private.

    A shared temp dir is writable by everyone: refusing a directory that another user owns,
    or that others can write, keeps them from planting or reading our spools.
    """
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        # Not followed: whoever can change the link would choose where spools go.
        raise OSError(
            f"{path} is a symbolic link (to {os.path.realpath(path)}): name the directory itself"
        )
    if not stat.S_ISDIR(st.st_mode):
        raise OSError(f"{path} is not a directory")
    if hasattr(os, "getuid") and st.st_uid != os.getuid():
        raise PermissionError(f"{path} belongs to uid {st.st_uid}, not to us ({os.getuid()})")
    if st.st_mode & 0o022:
        raise PermissionError(f"{path} is writable by other users (mode {st.st_mode & 0o777:o})")


class SpoolWriter:
    """One process's spool: scoreboard slots, the ring of finished requests, accept events.

    Threads of the process share it. Ring positions come from a counter whose ``next()`` is
    atomic under the GIL (``itertools.count``, or the accelerator's ``Counter``, which its C
    code also reads directly), so two threads never write the same entry. Entries are
    published as ``wsgiwatch.spool.layout`` describes: :meth:`commit` for records (in C when
    the accelerator is loaded, else :meth:`commit_locked`), :meth:`write_accept` for accepts.
    """

    __slots__ = (
        "_accept_seq",
        "_high_water",
        "_next_slot",
        "accept_base",
        "accept_capacity",
        "commit",
        "fast",
        "free_slots",
        "inode",
        "lock",
        "mm",
        "next_check_ns",
        "path",
        "pid",
        "record_base",
        "record_seq",
        "request_numbers",
        "ring_capacity",
        "size",
        "slot_count",
    )

    def __init__(
        self,
        mm: mmap.mmap,
        path: str,
        pid: int,
        slot_count: int,
        ring_capacity: int,
        accept_capacity: int,
        inode: int = 0,
    ) -> None:
        self.mm = mm
        self.path = path
        self.inode = inode  # the file's, to tell it from another one put at its path
        self.size = len(mm)
        self.next_check_ns = 0  # when the middleware next checks that the file is still there
        self.pid = pid
        self.slot_count = slot_count
        self.ring_capacity = ring_capacity
        self.accept_capacity = accept_capacity
        self.record_base = fmt.HEADER_SIZE + slot_count * fmt.SLOT_SIZE
        self.accept_base = self.record_base + ring_capacity * fmt.RECORD_SIZE
        self.lock = threading.Lock()  # held from claiming a ring entry to publishing it
        self._accept_seq = itertools.count()
        # Free scoreboard slots; list.pop() and append() are atomic under the GIL. A slot
        # belongs to a request in flight, not to a thread, so greenlets work too.
        self.free_slots: list[int] = []
        self._next_slot = itertools.count()
        self._high_water = 0
        # Ring positions, and numbers for requests in flight on the scoreboard (0 there
        # means idle). With the C accelerator, its Spool writes the ring and these counters
        # are ones it reads without a call; Python's next() works on both kinds.
        self.record_seq: Iterator[int]
        self.request_numbers: Iterator[int]
        self.fast: Any = None  # the accelerator's Spool: every ring write goes through it
        if speedups is None:
            self.record_seq = itertools.count()
            self.request_numbers = itertools.count(1)
        else:
            self.record_seq = records = speedups.Counter(0)
            self.request_numbers = requests = speedups.Counter(1)
            self.fast = speedups.Spool(
                mm,
                self.record_base,
                ring_capacity,
                slot_count,
                self.free_slots,
                self.acquire_slot,
                requests,
                records,
            )
        # Decided once, here: the C Spool's commit (which needs no lock: it holds the GIL
        # from claim to publish) or the Python one.
        self.commit: Callable[[bytes], object] = (
            self.commit_locked if self.fast is None else self.fast.commit
        )

    # -- scoreboard ------------------------------------------------------------------------
    def acquire_slot(self) -> int:
        """A free slot index, or ``NO_SLOT`` when every slot is in use (counted)."""
        try:
            return self.free_slots.pop()
        except IndexError:
            pass
        index = next(self._next_slot)
        if index < self.slot_count:
            if index + 1 > self._high_water:
                self._high_water = index + 1
                fmt.U32.pack_into(self.mm, fmt.OFF_SLOT_HIGH_WATER, self._high_water)
            return index
        self.bump(fmt.OFF_SLOTS_EXHAUSTED)
        return fmt.NO_SLOT

    def release_slot(self, index: int) -> None:
        """Mark the slot idle (its first field 0) and put it back on the free list."""
        fmt.SLOT_REQUEST.pack_into(self.mm, self.slot_offset(index), 0)
        self.free_slots.append(index)

    def slot_offset(self, index: int) -> int:
        return fmt.HEADER_SIZE + index * fmt.SLOT_SIZE

    # -- rings -----------------------------------------------------------------------------
    def _publish(
        self,
        seq_counter: Iterator[int],
        base: int,
        capacity: int,
        entry_size: int,
        body: bytes,
        head_offset: int,
    ) -> None:
        """Publish ``body`` into the next entry of a ring, in the order layout.py's docstring
        gives (stamp invalid, body, stamp, head). One writer at a time from claim to
        publish: a thread paused between these stores could otherwise be lapped by the
        others and publish an entry mixing two. (acquire/try/finally rather than ``with``:
        cheaper on this path.)"""
        mm = self.mm
        stamp_at = entry_size - 8
        lock = self.lock
        lock.acquire()
        try:
            seq = next(seq_counter)
            off = base + (seq % capacity) * entry_size
            mm[off + stamp_at : off + entry_size] = _INVALID_STAMP
            mm[off : off + len(body)] = body
            seq += 1  # entries carry sequence + 1, so zeroed memory never looks written
            _U64_pack(mm, off + stamp_at, seq)
            _U64_pack(mm, head_offset, seq)
        finally:
            lock.release()

    def commit_locked(self, body: bytes) -> None:
        """Publish a finished-request record (slot image + exit part, ``RECORD_SEQ_OFFSET``
        bytes) from Python, under the writer's lock."""
        if len(body) != fmt.RECORD_SEQ_OFFSET:
            raise ValueError(f"a record body is {fmt.RECORD_SEQ_OFFSET} bytes, not {len(body)}")
        self._publish(
            self.record_seq,
            self.record_base,
            self.ring_capacity,
            fmt.RECORD_SIZE,
            body,
            fmt.OFF_RING_HEAD,
        )

    def write_accept(
        self,
        accept_ns: int,
        arrival_ns: int,
        peer_port: int,
        server_port: int,
        listener_fd: int,
        peer: bytes,
    ) -> None:
        body = fmt.ACCEPT_BODY.pack(
            accept_ns, arrival_ns, peer_port, server_port, listener_fd, peer
        )
        self._publish(
            self._accept_seq,
            self.accept_base,
            self.accept_capacity,
            fmt.ACCEPT_SIZE,
            body,
            fmt.OFF_ACCEPT_HEAD,
        )

    # -- header ----------------------------------------------------------------------------
    def bump(self, offset: int) -> None:
        """Add one to a header counter. Rare events only; a lost increment between two
        threads racing here would only undercount a loss counter by one."""
        fmt.U64.pack_into(self.mm, offset, fmt.U64.unpack_from(self.mm, offset)[0] + 1)

    def set_flags(self, bits: int) -> None:
        old = fmt.U32.unpack_from(self.mm, fmt.OFF_FLAGS)[0]
        fmt.U32.pack_into(self.mm, fmt.OFF_FLAGS, old | bits)

    def set_counter(self, offset: int, value: int) -> None:
        fmt.U64.pack_into(self.mm, offset, value)

    def set_declared_capacity(self, capacity: int) -> None:
        fmt.U32.pack_into(self.mm, fmt.OFF_DECLARED_CAPACITY, max(0, min(capacity, 0xFFFF)))

    def note_server(self, software: str, multithread: bool, multiprocess: bool) -> None:
        fmt.SERVER_FIELD.pack_into(
            self.mm, fmt.OFF_SERVER, software.encode("ascii", "replace")[:32]
        )
        self.set_flags(
            (fmt.HEADER_FLAG_COOPERATIVE if greenlets_patched() else 0)
            | (fmt.HEADER_FLAG_MULTITHREAD if multithread else 0)
            | (fmt.HEADER_FLAG_MULTIPROCESS if multiprocess else 0)
            | (fmt.HEADER_FLAG_ACCELERATED if self.fast is not None else 0)
        )

    def unmap(self) -> None:
        """Stop writing and unmap the file; it stays (a reader may still want it)."""
        if self.fast is not None:
            self.fast.release()  # a mapping with a C view on it refuses to close
        self.mm.close()

    def close(self) -> None:
        """Unmap and remove the file: used when a process ends cleanly, and by tests."""
        try:
            self.unmap()
        finally:
            try:
                os.unlink(self.path)
            except OSError:
                pass


def open_spool(
    directory: str,
    *,
    slot_count: int = DEFAULT_SLOTS,
    ring_capacity: int = DEFAULT_RING,
    accept_capacity: int = DEFAULT_ACCEPTS,
) -> SpoolWriter:
    """Create this process's spool file in ``directory`` and map it.

    Raises ``OSError`` when that cannot be done; the middleware catches it, logs it once and
    serves on without recording.
    """
    ensure_private_dir(directory)
    pid = os.getpid()
    start_ticks = process_start_ticks(pid) or 0
    path = os.path.join(directory, fmt.spool_name(pid, start_ticks))
    size = fmt.spool_size(slot_count, ring_capacity, accept_capacity)
    flags = os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(path, flags, 0o600)
    try:
        # Reserve the pages now: on a full tmpfs a write into a sparse mapping is a SIGBUS
        # that would kill the worker, while a failed fallocate is an ordinary error here.
        if hasattr(os, "posix_fallocate"):
            os.posix_fallocate(fd, 0, size)
        else:  # pragma: no cover - macOS
            os.ftruncate(fd, size)
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
        raise
    inode = os.fstat(fd).st_ino
    os.close(fd)
    # Every field but the magic first, so a reader never sees a valid magic before the
    # geometry it needs.
    fmt.HEADER_IDENTITY.pack_into(
        mm,
        0,
        b"\0" * 8,
        fmt.VERSION,
        fmt.HEADER_SIZE,
        pid,
        start_ticks,
        time.time_ns(),
        time.monotonic_ns(),
        slot_count,
        fmt.SLOT_SIZE,
        ring_capacity,
        fmt.RECORD_SIZE,
        accept_capacity,
        fmt.ACCEPT_SIZE,
        0,
        os.getppid(),
    )
    mm[0:8] = fmt.MAGIC
    return SpoolWriter(mm, path, pid, slot_count, ring_capacity, accept_capacity, inode)


def greenlets_patched() -> bool:
    """Whether gevent or eventlet has replaced threads with greenlets in this process."""
    gevent_monkey = sys.modules.get("gevent.monkey")
    if gevent_monkey is not None:
        try:
            if gevent_monkey.is_module_patched("threading"):
                return True
        except Exception:
            pass
    eventlet_patcher = sys.modules.get("eventlet.patcher")
    if eventlet_patcher is not None:
        try:
            return bool(eventlet_patcher.is_monkey_patched("thread"))
        except Exception:
            return False
    return False
