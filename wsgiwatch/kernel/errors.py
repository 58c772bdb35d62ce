"""Errors raised by the kernel observer.

One base class, :class:`KernelError` (itself a :class:`wsgiwatch.errors.WsgiwatchError`), so
a caller catches everything this package raises in one clause. A parse error names what was
malformed and where: no ``IndexError`` or ``struct.error`` ever leaks out of kernel bytes.
"""

from __future__ import annotations

import os

from wsgiwatch.errors import WsgiwatchError

__all__ = ["KernelError", "KernelParseError", "KernelUnavailable", "NetlinkError"]


class KernelError(WsgiwatchError):
    """Base class of every error raised by :mod:`wsgiwatch.kernel`."""


class KernelParseError(KernelError, ValueError):
    """Bytes or text from the kernel (or a fixture) that do not match the documented layout.

    ``what`` names the structure or file being read, ``offset`` is the byte offset in the
    buffer where it starts (``None`` for text files) and ``detail`` says what was wrong.
    """

    def __init__(self, what: str, detail: str, offset: int | None = None) -> None:
        where = "" if offset is None else f" at offset {offset}"
        super().__init__(f"malformed {what}{where}: {detail}")
        self.what = what
        self.offset = offset
        self.detail = detail


class NetlinkError(KernelError, OSError):
    """The kernel answered a request with ``NLMSG_ERROR`` (or a failed ``NLMSG_DONE``).

    ``errno`` is the positive errno value, as for any :class:`OSError`.
    """

    def __init__(self, errno_value: int, what: str) -> None:
        super().__init__(errno_value, f"{what}: {os.strerror(errno_value)}")


class KernelUnavailable(KernelError):
    """The kernel interface cannot be used here: not Linux, or netlink was refused."""
