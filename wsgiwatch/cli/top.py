"""``wsgiwatch top``: a live terminal view of a running sidecar, like uwsgitop.

Every refresh it reads the sidecar's ``/api/state`` (workers, what each slot runs and for
how long, requests stalled inside busy workers, kernel backlogs) and its ``/metrics``
(running totals), and redraws the screen with plain ANSI sequences on the alternate
screen; ``q`` quits. ``--once`` prints one frame, without colours, to standard output.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import select
import shutil
import sys
import termios
import textwrap
import time
import tty
from collections.abc import Iterator, Mapping
from typing import Any, TextIO

from wsgiwatch.cli.client import Metrics, SidecarClient, SidecarUnreachable
from wsgiwatch.cli.common import EXIT_UNREACHABLE, add_sidecar_options, sidecar_url
from wsgiwatch.cli.common import seconds_text as _ms
from wsgiwatch.sidecar.views import LiveState, StallView, WorkerView

Line = tuple[str, str]  # (text, style): style is "", "bold", "dim", "red", "yellow", "head"

_SGR = {"": "", "bold": "1", "dim": "2", "red": "1;31", "yellow": "33", "head": "7"}
#: A slot running this long is shown in yellow.
LONG_RUN_S = 1.0


def _mb(rss: Any) -> str:
    return f"{rss / 1e6:.0f}M" if rss else "-"


def frame(
    state: LiveState | None,
    metrics: Metrics | None,
    url: str,
    interval_s: float | None = None,
    error: str | None = None,
) -> list[Line]:
    """The screen's lines, top to bottom (not yet cut to the terminal's size)."""
    clock = time.strftime("%H:%M:%S")
    title = f"wsgiwatch top - {url} - {clock}"
    if interval_s is not None:
        title += f" - every {interval_s:g} s - q quits"
    lines: list[Line] = [(title, "bold")]
    if error is not None:
        lines.append(("", ""))
        lines += [(text, "red") for text in textwrap.wrap(f"sidecar unreachable: {error}", 72)]
        lines.append(("retrying...", "dim"))
        return lines
    assert state is not None
    workers: list[WorkerView] = state.get("workers", [])
    stalls: list[StallView] = state.get("stalls", [])
    busy = sum(int(w.get("busy") or 0) for w in workers)
    capacity = sum(int(w.get("capacity") or 0) for w in workers)
    summary = f"workers {len(workers)}   busy {busy}/{capacity}   stalled {len(stalls)}"
    if stalls:
        summary += f" (oldest {_ms(max(float(s['age_s']) for s in stalls))})"
    if metrics is not None:
        summary += (
            f"   requests {metrics.total('wsgiwatch_requests_total'):.0f}"
            f"   blocked {metrics.total('wsgiwatch_hol_blocked_requests_total'):.0f}"
            f"   misrouted {metrics.total('wsgiwatch_misrouted_requests_total'):.0f}"
        )
    lines += [(summary, "red" if stalls else ""), ("", "")]
    lines.append(("WORKER     PID  SERVER               BUSY   RSS  HOOK  STALLED", "head"))
    stalled_in: dict[int, int] = {}
    for s in stalls:
        stalled_in[int(s["worker"])] = stalled_in.get(int(s["worker"]), 0) + 1
    for w in workers:
        index = int(w["worker"])
        full = int(w.get("busy") or 0) >= int(w.get("capacity") or 1)
        n_stalled = stalled_in.get(index, 0)
        lines.append(
            (
                f"{index:>6} {w['pid']:>7}  {str(w.get('server') or '?')[:20]:<20} "
                f"{w.get('busy', 0):>2}/{w.get('capacity', '?'):<2} {_mb(w.get('rss_bytes')):>5}  "
                f"{'yes' if w.get('accept_hook') else 'no':<4}  {n_stalled or '':>3}",
                "red" if n_stalled else ("bold" if full else ""),
            )
        )
        slots = sorted(w.get("slots") or [], key=lambda s: -float(s.get("running_s") or 0))
        if not slots:
            lines.append(("         idle", "dim"))
        for slot in slots:
            running = float(slot.get("running_s") or 0)
            what = f"{slot.get('method', '')} {slot.get('path', '')}"
            lines.append(
                (
                    f"         tid {slot.get('tid', '?'):<8} {what[:40]:<40} {_ms(running):>9}  "
                    f"{slot.get('peer', '')}",
                    "yellow" if running >= LONG_RUN_S else "",
                )
            )
    lines += [("", ""), ("STALLED: inside a busy worker, waiting for a free slot", "head")]
    if not stalls:
        lines.append(("  none", "dim"))
    for s in sorted(stalls, key=lambda s: -float(s["age_s"])):
        how = "request not read yet" if s.get("unread") else "request read, not started"
        lines.append(
            (
                f"  worker {s['worker']:<4} waiting {_ms(float(s['age_s'])):>9}  "
                f"{s.get('peer', ''):<24} {how}",
                "red",
            )
        )
    lines += [("", ""), ("KERNEL BACKLOG: waiting there is healthy", "head")]
    listeners = state.get("listeners", [])
    if not listeners:
        seen = "not visible (no kernel access)" if not state.get("kernel") else "no listener"
        lines.append((f"  {seen}", "dim"))
    for listener in listeners:
        queued, limit = int(listener.get("backlog") or 0), listener.get("limit")
        lines.append(
            (
                f"  {listener['listener']:<40} {queued:>5} queued (limit {limit})",
                "yellow" if queued else "",
            )
        )
    return lines


def paint(lines: list[Line], width: int, height: int | None, color: bool) -> list[str]:
    """Cut to the screen (``height`` None: no limit) and add colours."""
    if height is not None and len(lines) > height:
        hidden = len(lines) - height + 1
        lines = [*lines[: height - 1], (f"... {hidden} more lines: enlarge the window", "dim")]
    out = []
    for text, style in lines:
        text = text[:width].ljust(width) if color and style == "head" else text[:width].rstrip()
        code = _SGR.get(style, "")
        out.append(f"\x1b[{code}m{text}\x1b[0m" if color and code else text)
    return out


def _read(client: SidecarClient) -> tuple[LiveState | None, Metrics | None, str | None]:
    try:
        return client.state(), client.metrics(), None
    except SidecarUnreachable as exc:
        return None, None, str(exc)


@contextlib.contextmanager
def _screen(out: TextIO, stdin_fd: int | None) -> Iterator[None]:
    """Alternate screen, hidden cursor, keys without Enter; all undone on the way out."""
    saved = termios.tcgetattr(stdin_fd) if stdin_fd is not None else None
    try:
        if stdin_fd is not None:
            tty.setcbreak(stdin_fd)
        out.write("\x1b[?1049h\x1b[?25l")
        out.flush()
        yield
    finally:
        out.write("\x1b[?25h\x1b[?1049l")
        out.flush()
        if saved is not None and stdin_fd is not None:
            termios.tcsetattr(stdin_fd, termios.TCSADRAIN, saved)


def _key(stdin_fd: int | None, timeout: float) -> str:
    """A key pressed within ``timeout`` seconds, else ""."""
    if stdin_fd is None:
        time.sleep(timeout)
        return ""
    ready, _, _ = select.select([stdin_fd], [], [], timeout)
    if not ready:
        return ""
    data = os.read(stdin_fd, 64)
    return "q" if not data else data.decode("utf-8", "replace")  # EOF: quit too


def live(client: SidecarClient, interval_s: float, out: TextIO, stdin: TextIO) -> int:
    stdin_fd = stdin.fileno() if stdin.isatty() else None
    with contextlib.suppress(KeyboardInterrupt), _screen(out, stdin_fd):
        while True:
            state, metrics, error = _read(client)
            size = shutil.get_terminal_size()
            lines = paint(
                frame(state, metrics, client.url, interval_s, error),
                size.columns,
                size.lines,
                True,
            )
            out.write("\x1b[H" + "".join(f"{line}\x1b[K\r\n" for line in lines[:-1]))
            out.write(lines[-1] + "\x1b[K\x1b[J")
            out.flush()
            deadline = time.monotonic() + interval_s
            while (left := deadline - time.monotonic()) > 0:
                key = _key(stdin_fd, left)
                if key and key[0] in "qQ":
                    return 0
                if key and key[0] in " r":
                    break  # redraw now
    return 0


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "top",
        help="a live view of a running sidecar: workers, what each slot runs, stalls, backlog",
        description="Show, refreshed every interval, what a running sidecar sees: each "
        "worker and what each busy slot has been running for how long, requests stalled "
        "inside busy workers and their age, and the kernel backlog of each listener. "
        "Keys: q quits, space or r refreshes now. Exit status: 0, or 2 with --once when "
        "the sidecar could not be read.",
    )
    add_sidecar_options(parser, timeout_s=2.0)
    parser.add_argument(
        "-n",
        "--interval",
        type=float,
        default=1.0,
        help="seconds between refreshes (default 1, at least 0.1)",
    )
    parser.add_argument(
        "--once", action="store_true", help="print one frame to standard output and exit"
    )
    parser.set_defaults(handler=command)


def command(
    args: argparse.Namespace,
    environ: Mapping[str, str],
    out: TextIO | None = None,
    stdin: TextIO | None = None,
) -> int:
    out = out or sys.stdout
    try:
        client = SidecarClient(sidecar_url(args, environ), args.timeout)
    except ValueError as exc:
        print(f"wsgiwatch top: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    if args.once:
        state, metrics, error = _read(client)
        if error is not None:
            print(f"wsgiwatch top: cannot read the sidecar: {error}", file=sys.stderr)
            return EXIT_UNREACHABLE
        width = max(100, shutil.get_terminal_size((100, 40)).columns)
        out.write("\n".join(paint(frame(state, metrics, client.url), width, None, False)) + "\n")
        return 0
    return live(client, max(0.1, args.interval), out, stdin or sys.stdin)
