"""What the commands that read a sidecar share: its address, durations, exit codes, and
how a span of time or a count reads in their text.

``diagnose``, ``whatif``, ``top`` and ``timeline`` are HTTP clients of one sidecar; the
address comes from ``--url``, else ``$WSGIWATCH_URL`` (read here, in the CLI, as every
``WSGIWATCH_`` variable is), else the default.
"""

from __future__ import annotations

import argparse
import textwrap
from collections.abc import Mapping

from wsgiwatch.cli.client import DEFAULT_URL, parse_duration

#: Exit codes of the commands that judge what they read (``diagnose``, ``whatif``).
EXIT_HEALTHY = 0
EXIT_BLOCKING = 1
#: Any command that could not read the sidecar.
EXIT_UNREACHABLE = 2

#: Lines of the commands' plain-text reports are wrapped at this width.
TEXT_WIDTH = 88


def add_sidecar_options(parser: argparse.ArgumentParser, *, timeout_s: float) -> None:
    """``--url`` and ``--timeout``, as every client of a sidecar takes them."""
    parser.add_argument(
        "--url",
        default=None,
        help=f"the sidecar's address (default: $WSGIWATCH_URL or {DEFAULT_URL})",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=timeout_s,
        help=f"seconds to wait for the sidecar (default {timeout_s:g})",
    )


def sidecar_url(args: argparse.Namespace, environ: Mapping[str, str]) -> str:
    return str(args.url or environ.get("WSGIWATCH_URL") or DEFAULT_URL)


def duration_arg(text: str) -> float:
    """A duration option for argparse: ``90s``, ``5m``, ``1h`` -> seconds."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def count_arg(text: str) -> int:
    """A count option for argparse: a whole number, at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: must be at least 1")
    return value


def seconds_text(seconds: float) -> str:
    """A span as people read it: ``12 ms`` below a second, ``1.25 s`` from there."""
    return f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.2f} s"


def window_text(seconds: float) -> str:
    """A look-back window in the unit it was probably given in: ``5 min``, ``1 h``."""
    if seconds >= 3600 and seconds % 3600 == 0:
        return f"{seconds / 3600:g} h"
    if seconds >= 60 and seconds % 60 == 0:
        return f"{seconds / 60:g} min"
    return f"{seconds:g} s"


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 worker``, ``2 workers`` (``many`` for irregular plurals)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"


def paragraph(text: str, indent: str = "", bullet: str = "") -> str:
    """``text`` wrapped to :data:`TEXT_WIDTH`, a bullet hanging before its first line."""
    return textwrap.fill(
        text,
        TEXT_WIDTH,
        initial_indent=indent + bullet,
        subsequent_indent=indent + " " * len(bullet),
    )
