"""The one base class of wsgiwatch's own errors, so callers can catch them all at once."""

from __future__ import annotations


class WsgiwatchError(Exception):
    """Base of every error wsgiwatch raises on purpose."""


class SpoolFormatError(WsgiwatchError, ValueError):
    """A spool file is truncated, corrupted, or of another version. Names the file."""


class SpoolNotReady(SpoolFormatError):
    """A spool whose magic is still zero: its process is creating it right now."""
