"""procfs, the one place that reads it: socket inodes, start times, CPU time and memory.

Every function takes the procfs root (``/proc`` on a real host) so tests can point it at a
fixture tree; nothing here reads the real ``/proc`` behind the caller's back (psutil would).
A process that exits while we read it, or that belongs to another user, is an expected event
for a sidecar that polls other processes: it yields an empty result, not an error. Bytes
that do not match the documented layout raise :class:`KernelParseError` naming the file.
"""

from __future__ import annotations

import os
import select
from dataclasses import dataclass

from wsgiwatch.kernel.errors import KernelParseError

__all__ = [
    "ExitWatch",
    "ProcessSample",
    "parse_start_ticks",
    "parse_stat",
    "pid_exists",
    "process_running",
    "process_sample",
    "process_start_ticks",
    "socket_inodes",
]

_SOCKET_PREFIX = "socket:["
# /proc/PID/stat fields, counted from 1 as proc(5) does; after "pid (comm) " the list
# starts at field 3.
_FIRST_FIELD = 3
_UTIME, _STIME, _STARTTIME = 14, 15, 22
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
# Where these are unknown (not a POSIX system) there is no procfs either.
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
# The process is gone, or hidepid= / another uid hides it from us: expected, skip it.
_GONE = (FileNotFoundError, NotADirectoryError, ProcessLookupError, PermissionError)


@dataclass(frozen=True, slots=True)
class ProcessSample:
    """What a process has used so far, read from its ``stat`` and ``statm``."""

    start_ticks: int  # with the pid, names the process for good
    cpu_seconds: float  # user + system
    rss_bytes: int | None  # None when statm could not be read


def socket_inodes(pid: int, procfs_root: str = "/proc") -> set[int]:
    """Inodes of the sockets process ``pid`` holds (``/proc/PID/fd`` links ``socket:[N]``).

    Reads the links relative to an open directory fd, which saves a path lookup per fd.
    """
    fd_dir = f"{procfs_root}/{pid}/fd"
    try:
        dir_fd = os.open(fd_dir, os.O_RDONLY | _O_DIRECTORY)
    except _GONE:  # fd/ also needs the same uid
        return set()
    inodes: set[int] = set()
    try:
        try:
            names = os.listdir(dir_fd)
        except _GONE:
            return inodes  # exited between open and listdir: expected
        for name in names:
            try:
                link = os.readlink(name, dir_fd=dir_fd)
            except OSError:
                continue  # this fd was closed since listdir (or the process exited): expected
            if link.startswith(_SOCKET_PREFIX) and link.endswith("]"):
                number = link[len(_SOCKET_PREFIX) : -1]
                if not number.isdigit():
                    raise KernelParseError(f"{fd_dir}/{name}", f"link target {link!r}")
                inodes.add(int(number))
    finally:
        os.close(dir_fd)
    return inodes


def parse_stat(data: bytes, source: str = "stat") -> dict[int, int]:
    """Start time and CPU ticks of a ``/proc/PID/stat`` line, keyed by field number
    (14 utime, 15 stime, 22 starttime, in clock ticks).

    The command name (field 2) is in parentheses and may itself hold spaces and parentheses,
    so the fields are counted from the *last* ``)``.
    """
    close = data.rfind(b")")
    if close < 0:
        raise KernelParseError(source, f"no ')' closing the command name in {data[:80]!r}")
    fields = data[close + 1 :].split()
    if len(fields) <= _STARTTIME - _FIRST_FIELD:
        raise KernelParseError(
            source, f"{len(fields) + _FIRST_FIELD - 1} fields, need at least {_STARTTIME}"
        )
    out: dict[int, int] = {}
    for number, name in ((_UTIME, "utime"), (_STIME, "stime"), (_STARTTIME, "starttime")):
        value = fields[number - _FIRST_FIELD]
        if not value.isdigit():
            raise KernelParseError(source, f"field {number} ({name}) is {value!r}, not a number")
        out[number] = int(value)
    return out


def parse_start_ticks(data: bytes, source: str = "stat") -> int:
    """Field 22 (``starttime``, clock ticks after boot) of a ``/proc/PID/stat`` line."""
    return parse_stat(data, source)[_STARTTIME]


#: Larger than any ``stat`` or ``statm`` line (about 300 bytes; the command name is at
#: most 64): one read() takes the whole file.
_READ_SIZE = 4096


def _read(path: str) -> bytes | None:
    """The whole (small) file, or None when the process is gone. ``os.open`` and one
    ``read``, not ``open()``: the sidecar reads these files for every worker on every poll,
    and a buffered file object costs more to build than the read itself."""
    try:
        fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
    except _GONE:
        return None
    try:
        data = os.read(fd, _READ_SIZE)
        if len(data) < _READ_SIZE:
            return data
        chunks = [data]  # (a fixture file, or a future kernel, may be longer)
        while chunk := os.read(fd, _READ_SIZE):
            chunks.append(chunk)
        return b"".join(chunks)
    except _GONE:
        return None  # it exited between open and read
    finally:
        os.close(fd)


def process_start_ticks(pid: int, procfs_root: str = "/proc") -> int | None:
    """When ``pid`` started, in clock ticks after boot; ``None`` if there is no such process.

    A pid plus its start time names a process for good: pids are reused, the pair is not.
    """
    path = f"{procfs_root}/{pid}/stat"
    data = _read(path)
    return None if data is None else parse_start_ticks(data, path)


def process_running(pid: int, start_ticks: int, procfs_root: str = "/proc") -> bool:
    """Whether the process ``pid`` that started at ``start_ticks`` still runs: not gone, not
    replaced by another process under its pid, and not a zombie (it has died; its parent
    has not yet collected its exit status, and it holds no file any more)."""
    path = f"{procfs_root}/{pid}/stat"
    data = _read(path)
    if data is None or parse_start_ticks(data, path) != start_ticks:
        return False
    state = data[data.rfind(b")") + 1 :].split()[0]
    return state not in (b"Z", b"X")


def process_sample(pid: int, procfs_root: str = "/proc") -> ProcessSample | None:
    """CPU time and resident memory of ``pid``; ``None`` if there is no such process."""
    path = f"{procfs_root}/{pid}/stat"
    data = _read(path)
    if data is None:
        return None
    fields = parse_stat(data, path)
    rss: int | None = None
    statm = _read(f"{procfs_root}/{pid}/statm")
    if statm is not None:
        # statm: size resident shared text lib data dt, in pages.
        parts = statm.split()
        if len(parts) < 2 or not parts[1].isdigit():
            raise KernelParseError(f"{procfs_root}/{pid}/statm", f"content {statm[:80]!r}")
        rss = int(parts[1]) * _PAGE_SIZE
    return ProcessSample(
        start_ticks=fields[_STARTTIME],
        cpu_seconds=(fields[_UTIME] + fields[_STIME]) / _CLOCK_TICKS,
        rss_bytes=rss,
    )


def pid_exists(pid: int) -> bool:
    """Whether a process ``pid`` exists (ours or another user's), by signal 0: unlike a
    look in procfs, this sees the caller's own pid namespace whatever root is injected."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, it is just not ours to signal
        return True
    return True


class ExitWatch:
    """Whether processes known to be running have exited since, for many at once: one
    ``poll(2)`` over a pidfd per process (Linux 5.3 and later), instead of reading and
    parsing ``/proc/PID/stat`` for every worker on every poll.

    A pidfd names one process for good (never a later one under a reused pid), and reads
    as ready once that process has exited, zombie or reaped: what
    :func:`process_running` calls not running. :meth:`follow` opens it *before* checking
    the start time, so a pid reused in between is caught by the check. Only for the real
    ``/proc``: a fixture tree's pids are no processes of ours. Where pidfds cannot be had
    (an older kernel, a seccomp filter) :meth:`follow` says False and the caller reads
    ``stat`` as before.
    """

    def __init__(self, procfs_root: str = "/proc") -> None:
        self.enabled = procfs_root == "/proc" and hasattr(os, "pidfd_open")
        self._fds: dict[tuple[int, int], int] = {}  # (pid, start ticks) -> pidfd
        self._poller = select.poll() if self.enabled else None

    def follow(self, pid: int, start_ticks: int) -> bool:
        """Follow ``pid`` (which started at ``start_ticks``) if it runs now; whether it is
        followed (False: it is gone, or pidfds are unavailable: ask ``process_running``)."""
        key = (pid, start_ticks)
        if key in self._fds:
            return True
        if not self.enabled or not start_ticks or self._poller is None:
            return False
        try:
            fd = os.pidfd_open(pid)
        except OSError:  # gone, or pidfds refused here: the caller reads stat instead
            return False
        if not process_running(pid, start_ticks):
            os.close(fd)
            return False
        self._fds[key] = fd
        self._poller.register(fd, select.POLLIN)
        return True

    def exited(self) -> set[tuple[int, int]]:
        """The followed processes that have exited (one system call for all of them)."""
        if not self._fds or self._poller is None:
            return set()
        ready = {fd for fd, _events in self._poller.poll(0)}
        return {key for key, fd in self._fds.items() if fd in ready}

    def forget(self, pid: int, start_ticks: int) -> None:
        fd = self._fds.pop((pid, start_ticks), None)
        if fd is not None and self._poller is not None:
            self._poller.unregister(fd)
            os.close(fd)

    def close(self) -> None:
        for pid, start_ticks in list(self._fds):
            self.forget(pid, start_ticks)
