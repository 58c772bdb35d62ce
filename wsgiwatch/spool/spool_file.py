"""Opening a spool file for reading without trusting it.

Whoever can write into the spool directory controls the files the sidecar opens, so nothing
about them is believed before it is checked, and no check can hang or crash the reader:

- opened with ``O_NOFOLLOW | O_NONBLOCK | O_NOCTTY``: a symlink is refused by the kernel, a
  FIFO or a device opens without blocking (and is then refused: only regular files pass);
- owned by the reader's user or by the spool directory's owner (the workers' user);
- the header's geometry is held to hard caps *and* to the file's real size before anything
  is sized from it, and a sparse file is refused (the writer reserves every page with
  ``posix_fallocate``; a file with holes was crafted, or its pages never existed);
- nothing is mapped: the reader copies what it needs with ``pread``, so a file truncated
  under it gives a short read (an error naming the file and the offset), never SIGBUS.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass
from typing import Final

from wsgiwatch.errors import SpoolFormatError, SpoolNotReady
from wsgiwatch.spool import layout as fmt

#: Hard caps on a spool's geometry, far above any worker's needs (the defaults are 64 slots,
#: 4,096 records, 1,024 accept events): a header asking for more is refused before the
#: reader sizes anything from it. The scoreboard is read whole at every poll, hence its
#: lower cap (16,384 slots = 2.3 MB).
MAX_SLOTS: Final = 16_384
MAX_RING: Final = 1 << 20
MAX_ACCEPTS: Final = 1 << 20
MAX_SPOOL_BYTES: Final = fmt.spool_size(MAX_SLOTS, MAX_RING, MAX_ACCEPTS)

_OPEN_FLAGS: Final = (
    getattr(os, "O_NOFOLLOW", 0) | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | os.O_CLOEXEC
)


@dataclass(frozen=True, slots=True)
class Geometry:
    slot_count: int
    ring_capacity: int
    accept_capacity: int

    @property
    def record_base(self) -> int:
        return fmt.HEADER_SIZE + self.slot_count * fmt.SLOT_SIZE

    @property
    def accept_base(self) -> int:
        return self.record_base + self.ring_capacity * fmt.RECORD_SIZE


def pread_exact(fd: int, size: int, offset: int, path: str) -> bytes:
    """``size`` bytes at ``offset``, or :class:`SpoolFormatError` when the file no longer
    has them (truncated under us) or cannot be read."""
    try:
        data = os.pread(fd, size, offset)
    except OSError as exc:
        raise SpoolFormatError(
            f"{path}: cannot read {size} bytes at offset {offset}: {exc}", reason="truncated"
        ) from exc
    if len(data) != size:
        raise SpoolFormatError(
            f"{path}: truncated: {len(data)} of {size} bytes at offset {offset}",
            reason="truncated",
        )
    return data


def _allowed_owners(path: str) -> set[int]:
    owners = {os.geteuid()}
    try:
        owners.add(os.stat(os.path.dirname(path) or ".").st_uid)
    except OSError:
        pass
    return owners


def open_spool_file(path: str, *, writable: bool) -> tuple[int, bool, Geometry]:
    """Open and check ``path``; returns ``(fd, opened_writable, geometry)``. The caller owns
    the descriptor. Raises :class:`SpoolFormatError` (``SpoolNotReady`` while the header is
    still zero) with a ``reason``; never blocks."""
    fd = -1
    opened_writable = False
    try:
        if writable:
            try:
                fd = os.open(path, os.O_RDWR | _OPEN_FLAGS)
                opened_writable = True
            except PermissionError:
                pass
        if fd < 0:
            fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
    except OSError as exc:
        raise SpoolFormatError(f"{path}: cannot open: {exc}", reason="open") from exc
    try:
        return fd, opened_writable, _check(fd, path)
    except BaseException:
        os.close(fd)
        raise


def _check(fd: int, path: str) -> Geometry:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise SpoolFormatError(
            f"{path}: not a regular file (mode {stat.filemode(st.st_mode)})", reason="not_regular"
        )
    if st.st_uid not in _allowed_owners(path):
        raise SpoolFormatError(
            f"{path}: owned by uid {st.st_uid}, neither this process's user nor the spool "
            "directory's owner",
            reason="owner",
        )
    if st.st_size < fmt.HEADER_SIZE:
        raise SpoolFormatError(
            f"{path}: {st.st_size} bytes, shorter than the {fmt.HEADER_SIZE}-byte header",
            reason="short",
        )
    header = pread_exact(fd, fmt.HEADER_SIZE, 0, path)
    geometry = validate_header(header, path, st.st_size, age_s=time.time() - st.st_mtime)
    # A writer reserves every page (posix_fallocate); a file with holes was not written by
    # one, and reading it would fault in pages that were never there.
    if st.st_blocks * 512 < st.st_size:
        raise SpoolFormatError(
            f"{path}: sparse: {st.st_blocks * 512} of its {st.st_size} bytes allocated",
            reason="sparse",
        )
    return geometry


def validate_header(header: bytes, path: str, size: int, *, age_s: float = 0.0) -> Geometry:
    (
        magic,
        version,
        header_size,
        _pid,
        _ticks,
        _wall,
        _mono,
        slots,
        slot_size,
        ring,
        record_size,
        accepts,
        accept_size,
        _cap,
        _ppid,
    ) = fmt.HEADER_IDENTITY.unpack_from(header, 0)
    if magic == b"\0" * 8:
        zeroed = not any(header)
        raise SpoolNotReady(
            f"{path}: not initialised (magic at offset 0 still zero"
            f"{', the whole header is zero' if zeroed else ''}; modified {age_s:.1f} s ago)",
            age_s=age_s,
            zeroed=zeroed,
        )
    if magic != fmt.MAGIC:
        raise SpoolFormatError(
            f"{path}: bad magic {magic!r} at offset 0 (not a wsgiwatch spool, or still being "
            "created)",
            reason="magic",
        )
    if version != fmt.VERSION:
        raise SpoolFormatError(
            f"{path}: format version {version} at offset 8; this wsgiwatch reads version "
            f"{fmt.VERSION}",
            reason="version",
        )
    for name, offset, found, want in (
        ("header_size", 10, header_size, fmt.HEADER_SIZE),
        ("slot_size", 44, slot_size, fmt.SLOT_SIZE),
        ("record_size", 52, record_size, fmt.RECORD_SIZE),
        ("accept_size", 60, accept_size, fmt.ACCEPT_SIZE),
    ):
        if found != want:
            raise SpoolFormatError(
                f"{path}: {name} is {found} at offset {offset}, expected {want}",
                reason="geometry",
            )
    if not (slots and ring and accepts):
        raise SpoolFormatError(
            f"{path}: empty geometry (slots={slots}, ring={ring}, accepts={accepts})",
            reason="geometry",
        )
    for name, offset, found, cap in (
        ("slot_count", 40, slots, MAX_SLOTS),
        ("ring_capacity", 48, ring, MAX_RING),
        ("accept_capacity", 56, accepts, MAX_ACCEPTS),
    ):
        if found > cap:
            raise SpoolFormatError(
                f"{path}: {name} {found} at offset {offset} is above the reader's cap {cap}",
                reason="geometry",
            )
    expected = fmt.spool_size(slots, ring, accepts)
    if size != expected:
        raise SpoolFormatError(
            f"{path}: file is {size} bytes, its header describes {expected} "
            f"(slots={slots}, ring={ring}, accepts={accepts})",
            reason="size",
        )
    return Geometry(slots, ring, accepts)
