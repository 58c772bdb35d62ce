"""A worker's last word: how it ended, written next to its spool by the worker itself.

``PID-STARTTICKS.fate`` (beside ``PID-STARTTICKS.spool``) is one line of JSON,
``{"fate": "timed_out", "requests": [17, 18]}``: the fate, and the request numbers that were
in flight then. gunicorn's hooks write it (:mod:`wsgiwatch.gunicorn_config`):
``worker_abort`` when the arbiter aborts a worker after its ``--timeout``, ``worker_exit``
when a worker exits through its own code. A worker that leaves no note was killed outright
(SIGKILL, the OOM killer, a crash). The sidecar reads the note when it retires the spool and
removes both. It is written to a temporary name and renamed, so a reader sees all of it or
nothing; it is read without following links or blocking, and only if small.
"""

from __future__ import annotations

import json
import mmap
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

from wsgiwatch.spool import layout as fmt

KILLED: Final = "killed"
TIMED_OUT: Final = "timed_out"
EXITED: Final = "exited"
FATES: Final = (KILLED, TIMED_OUT, EXITED)
SUFFIX: Final = ".fate"
#: A note is a fate and a few request numbers; anything longer is not ours.
MAX_NOTE_BYTES: Final = 4096


@dataclass(frozen=True, slots=True)
class Note:
    fate: str
    requests: frozenset[int]  # request numbers in flight when it was written


def note_path(spool_path: str) -> str:
    base = spool_path[: -len(fmt.SUFFIX)] if spool_path.endswith(fmt.SUFFIX) else spool_path
    return base + SUFFIX


def write_note(spool_path: str, fate: str, requests: Iterable[int] = ()) -> None:
    """Leave this process's note beside its own spool (``OSError`` if that cannot be
    done; the hooks swallow it: a note is worth less than the server's own exit). An
    ``exited`` note never replaces a ``timed_out`` one: an aborted worker exits too."""
    if fate not in FATES:
        raise ValueError(f"fate must be one of {FATES}, not {fate!r}")
    path = note_path(spool_path)
    if fate == EXITED and os.path.lexists(path):
        return
    data = json.dumps({"fate": fate, "requests": sorted(requests)}).encode()
    tmp = f"{path}.{os.getpid()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def running_requests(mm: mmap.mmap, slot_count: int) -> list[int]:
    """Request numbers on a spool's scoreboard (its writer's own mapping) right now."""
    numbers = (
        fmt.SLOT_REQUEST.unpack_from(mm, fmt.HEADER_SIZE + i * fmt.SLOT_SIZE)[0]
        for i in range(slot_count)
    )
    return [n for n in numbers if n]


def read_note(spool_path: str) -> Note | None:
    """The note beside ``spool_path``, or None if there is none or it is not one we wrote
    (not a small regular file, not our JSON): a dead worker's fate is then unknown."""
    try:
        fd = os.open(note_path(spool_path), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_NOTE_BYTES:
            return None
        raw = os.read(fd, MAX_NOTE_BYTES)
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        data = json.loads(raw)
        fate, requests = data["fate"], data["requests"]
    except (ValueError, TypeError, KeyError):
        return None
    if fate not in FATES or not isinstance(requests, list):
        return None
    if not all(isinstance(n, int) and not isinstance(n, bool) for n in requests):
        return None
    return Note(fate, frozenset(requests))
