"""What happens when wsgiwatch itself fails while recording a request: the record is lost,
the spool header counts it (``write_errors``), and the first failure of the process is
logged with its traceback. The app never sees any of it."""

from __future__ import annotations

import logging

from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.writer import SpoolWriter

logger = logging.getLogger("wsgiwatch")

#: Non-empty once this process has logged an internal error (one line per process, not
#: one per request).
logged: list[bool] = []

_MESSAGE = "worker.internal_error: a request was not recorded (logged once per process)"


def internal_error(writer: SpoolWriter) -> None:
    """Count and (once) log the exception being handled."""
    try:
        writer.bump(fmt.OFF_WRITE_ERRORS)
    except Exception:
        pass
    if not logged:
        logged.append(True)
        logger.exception(_MESSAGE)


def log_internal_error(exc: BaseException) -> None:
    """The C path's report of an internal error (it has counted it in the header)."""
    if not logged:
        logged.append(True)
        logger.error(_MESSAGE, exc_info=exc)
