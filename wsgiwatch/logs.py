"""Log output of the ``wsgiwatch`` commands: one structured event per line, on stderr.

The library never configures logging; only the CLI calls :func:`configure_logging`. Events
from structlog (``sidecar.started``, ``hol.incident``) and records from the standard
``logging`` module (the kernel observer, the spool code) go through one handler, so both come
out in the same format: one JSON object per line with an ISO-8601 UTC ``timestamp``, a
``level`` and an ``event``, or a human-readable line with ``console``.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import structlog
from structlog.typing import Processor

LogFormat = Literal["json", "console"]
LOG_FORMATS: tuple[LogFormat, ...] = ("json", "console")

# The handler we installed last, so a second call replaces it instead of doubling every line.
_handler: logging.Handler | None = None


def configure_logging(
    fmt: LogFormat = "json", *, level: int = logging.INFO, stream: TextIO | None = None
) -> None:
    """Route structlog and standard logging to ``stream`` (stderr) as JSON or console lines."""
    global _handler
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r}: expected one of {', '.join(LOG_FORMATS)}")
    # Applied to every event, whichever API produced it.
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_logger_name,
        structlog.stdlib.add_log_level,
        structlog.stdlib.ExtraAdder(),
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Processor
    if fmt == "json":
        renderer = structlog.processors.JSONRenderer()
        # Tracebacks as data, so a JSON line stays one line.
        shared.append(structlog.processors.dict_tracebacks)
    else:
        renderer = structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            structlog.processors.StackInfoRenderer(),
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    root = logging.getLogger()
    if _handler is not None:
        root.removeHandler(_handler)
    root.addHandler(handler)
    root.setLevel(level)
    _handler = handler
