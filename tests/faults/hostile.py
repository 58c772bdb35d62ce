"""Hostile spool files, made the way an attacker or an accident would make them.

Each maker puts one file (or FIFO, symlink, directory) named like a spool in a directory
and returns the ``reason`` the reader gives it (``SpoolFormatError.reason``).
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable

from wsgiwatch.spool import layout as fmt

#: Pids above any pid_max: never a live process.
HOSTILE_PID = 5_100_000


def _name(directory: str, n: int) -> str:
    return os.path.join(directory, fmt.spool_name(HOSTILE_PID + n, 1000))


def header(slots: int, ring: int, accepts: int, pid: int = HOSTILE_PID) -> bytes:
    """A valid header (magic, version, sizes) for the given geometry."""
    identity = fmt.HEADER_IDENTITY.pack(
        fmt.MAGIC,
        fmt.VERSION,
        fmt.HEADER_SIZE,
        pid,
        1000,
        0,
        0,
        slots,
        fmt.SLOT_SIZE,
        ring,
        fmt.RECORD_SIZE,
        accepts,
        fmt.ACCEPT_SIZE,
        1,
        1,
    )
    return identity + b"\0" * (fmt.HEADER_SIZE - len(identity))


def fifo(directory: str) -> str:
    os.mkfifo(_name(directory, 1), 0o600)
    return "not_regular"


def symlink_to_dev_zero(directory: str) -> str:
    os.symlink("/dev/zero", _name(directory, 2))
    return "open"


def sparse_huge_geometry(directory: str) -> str:
    """Within the caps, the right size, but sparse: 16,384 slots and 1M records (212 MB)
    that take no memory until read, as in the report that filled a 256 MB tmpfs."""
    path = _name(directory, 3)
    with open(path, "wb") as f:
        f.write(header(16_384, 1 << 20, 1 << 10))
        f.truncate(fmt.spool_size(16_384, 1 << 20, 1 << 10))
    return "sparse"


def geometry_above_caps(directory: str) -> str:
    """4M slots, sparse-truncated to the size they describe: 600 MB of holes."""
    path = _name(directory, 4)
    with open(path, "wb") as f:
        f.write(header(4_000_000, 64, 16))
        f.truncate(fmt.spool_size(4_000_000, 64, 16))
    return "geometry"


def all_zero(directory: str) -> str:
    with open(_name(directory, 5), "wb") as f:
        f.write(b"\0" * fmt.spool_size(4, 64, 16))
    return "zeroed"


def random_bytes(directory: str) -> str:
    with open(_name(directory, 6), "wb") as f:
        f.write(random.Random(12).randbytes(fmt.spool_size(4, 64, 16)))
    return "magic"


def truncated(directory: str) -> str:
    """A valid header whose file was cut short (a half-copied or truncated spool)."""
    with open(_name(directory, 7), "wb") as f:
        f.write(header(4, 64, 16) + b"\0" * 1000)
    return "size"


def a_directory(directory: str) -> str:
    os.mkdir(_name(directory, 8))
    return "open"  # EISDIR: a directory cannot be opened for writing


MAKERS: dict[str, Callable[[str], str]] = {
    f.__name__: f
    for f in (
        fifo,
        symlink_to_dev_zero,
        sparse_huge_geometry,
        geometry_above_caps,
        all_zero,
        random_bytes,
        truncated,
        a_directory,
    )
}
