"""The one base class of wsgiwatch's own errors, so callers can catch them all at once."""

from __future__ import annotations


class WsgiwatchError(Exception):
    """Base of every error wsgiwatch raises on purpose."""


class SpoolFormatError(WsgiwatchError, ValueError):
    """A spool file is truncated, corrupted, hostile or of another version. Names the file
    (and the offset where one applies).

    ``reason`` is a short stable word a caller can count by (a metric label, a log field):
    ``open``, ``not_regular``, ``owner``, ``short``, ``magic``, ``version``, ``geometry``,
    ``size``, ``sparse``, ``truncated``, ``zeroed``, ``not_ready``.
    """

    def __init__(self, message: str, *, reason: str = "format") -> None:
        super().__init__(message)
        self.reason = reason


class SpoolNotReady(SpoolFormatError):
    """A spool whose magic is still zero: its process is creating it right now, or (when it
    stays so) a file that is all zeroes. ``age_s`` is how long ago the file was last
    modified, so a caller can tell the two apart (a writer fills its header within
    microseconds of creating the file); ``zeroed`` says the whole header is zero."""

    def __init__(self, message: str, *, age_s: float = 0.0, zeroed: bool = False) -> None:
        super().__init__(message, reason="zeroed" if zeroed else "not_ready")
        self.age_s = age_s
        self.zeroed = zeroed
