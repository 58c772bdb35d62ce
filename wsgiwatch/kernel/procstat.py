"""A process's start time, which with its pid names one process for good (pids are reused)."""

from __future__ import annotations

import os


def parse_start_ticks(stat_line: str) -> int:
    """Field 22 of ``/proc/PID/stat``: start time in clock ticks after boot.

    The command name (field 2) is in parentheses and may itself hold spaces and ``)``, so
    the fields are counted from the *last* closing parenthesis.
    """
    close = stat_line.rfind(")")
    if close < 0:
        raise ValueError(f"no ')' in stat line {stat_line[:80]!r}")
    fields = stat_line[close + 2 :].split()
    # fields[0] is field 3 (state); field 22 is therefore fields[19].
    if len(fields) < 20:
        raise ValueError(f"stat line has {len(fields) + 2} fields, need 22: {stat_line[:80]!r}")
    return int(fields[19])


def pid_exists(pid: int) -> bool:
    """Whether a process ``pid`` exists (ours or another user's)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, it is just not ours to signal
        return True
    return True


def process_start_ticks(pid: int, procfs_root: str = "/proc") -> int | None:
    """Start ticks of ``pid``, or None when it is gone or procfs is not there (not Linux)."""
    try:
        with open(
            os.path.join(procfs_root, str(pid), "stat"), encoding="ascii", errors="replace"
        ) as f:
            return parse_start_ticks(f.read())
    except (OSError, ValueError):
        # A vanished pid is normal here: workers come and go between listing and reading.
        return None
