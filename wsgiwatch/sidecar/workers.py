"""The worker processes behind the spool files: discovery, stable indexes, retirement.

A spool names its process by pid and start time, so a recycled pid is never mistaken for
the worker that wrote the file. Each live worker gets the lowest free ``worker`` index (a
Prometheus label that stays small: a replaced worker hands its index to its successor).
The spool of a process that is gone is drained once more, then removed.
"""

from __future__ import annotations

import collections
import os
from dataclasses import dataclass, field

import structlog

from wsgiwatch.errors import SpoolFormatError, SpoolNotReady
from wsgiwatch.kernel.procfs import pid_exists, process_start_ticks
from wsgiwatch.sidecar.detect import Run
from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.reader import SlotState, SpoolHeader, SpoolReader

log = structlog.get_logger("wsgiwatch.sidecar")

#: Finished runs kept per worker, to find the blockers of requests that waited long.
HISTORY_RUNS = 4096


@dataclass(eq=False)
class Worker:
    index: int
    reader: SpoolReader
    header: SpoolHeader
    alive: bool = True
    history: collections.deque[Run] = field(
        default_factory=lambda: collections.deque(maxlen=HISTORY_RUNS)
    )
    slots: list[SlotState] = field(default_factory=list)
    running: list[Run] = field(default_factory=list)
    last_lost: int = 0  # records its reader found overwritten, as its header counts them
    rss: int | None = None
    #: Seen holding a waiting connection while at capacity: a greedy acceptor (gthread,
    #: waitress), where a proxy's time alone may count toward a blocking verdict.
    accepts_when_full: bool = False

    @property
    def pid(self) -> int:
        return self.reader.pid

    @property
    def ppid(self) -> int:
        return self.header.ppid

    @property
    def capacity(self) -> int:
        return self.header.capacity

    @property
    def blocking_capacity(self) -> int:
        """Capacity for blocking verdicts: 1 where greenlets share one thread, since a
        greenlet that does not yield holds the whole process however many slots it has."""
        return 1 if self.header.cooperative else self.capacity

    @property
    def busy(self) -> int:
        return len(self.slots)

    def recent_runs(self) -> list[Run]:
        return [*self.history, *self.running]


class WorkerRegistry:
    """Follows the spool directory: which spools exist, which processes still live.

    Cleaning up is the sidecar's job (a worker only ever touches its own spool): the spool
    of a process that is gone (no such pid, or the pid now names a process with another
    start time) is drained once more, then removed (:meth:`retire`); one that cannot be read
    is removed once its process, named by the file's name, is gone. Entries that are not
    regular files (a FIFO, a symlink, a directory) are never opened: opening a FIFO would
    block. They are counted and logged once, and left alone.
    """

    def __init__(self, spool_dir: str, procfs_root: str = "/proc") -> None:
        self.spool_dir = spool_dir
        self.procfs_root = procfs_root
        self.workers: dict[str, Worker] = {}  # spool path -> worker
        self._bad: dict[str, int] = {}  # unreadable path -> its mtime (ns) when counted
        self.spool_errors = 0
        self.retired_lost = 0  # records lost in spools already removed

    def _alive(self, pid: int, start_ticks: int) -> bool:
        if start_ticks:
            return process_start_ticks(pid, self.procfs_root) == start_ticks
        return pid_exists(pid)

    def _free_index(self) -> int:
        used = {w.index for w in self.workers.values()}
        index = 0
        while index in used:
            index += 1
        return index

    def _entries(self) -> dict[str, os.DirEntry[str]]:
        try:
            with os.scandir(self.spool_dir) as it:
                return {e.path: e for e in it if e.name.endswith(fmt.SUFFIX)}
        except OSError:
            return {}

    def refresh(self) -> None:
        """Open new spools, mark workers whose process is gone (``alive = False``)."""
        entries = self._entries()
        for path, entry in sorted(entries.items()):
            worker = self.workers.get(path)
            if worker is None:
                worker = self._open(entry)
                if worker is None:
                    continue
            worker.alive = self._alive(worker.pid, worker.reader.start_ticks)
        for path, worker in list(self.workers.items()):
            if path not in entries:  # removed behind our back: nothing more to read
                worker.alive = False
        for path in [p for p in self._bad if p not in entries]:
            del self._bad[path]

    def _unreadable(self, entry: os.DirEntry[str], event: str, **facts: object) -> None:
        """Count and log an unreadable entry once (again only if it changes)."""
        try:
            mtime = entry.stat(follow_symlinks=False).st_mtime_ns
        except OSError:
            return  # gone meanwhile
        if self._bad.get(entry.path) == mtime:
            return
        self._bad[entry.path] = mtime
        self.spool_errors += 1
        log.warning(event, path=entry.path, **facts)

    def _owner_gone(self, name: str) -> bool:
        """Whether the process a spool's name gives (``PID-STARTTICKS.spool``) is gone.
        A name that is not of that form names no process we could ask about: never gone."""
        pid_text, _, ticks_text = name[: -len(fmt.SUFFIX)].partition("-")
        if not (pid_text.isdigit() and ticks_text.isdigit()):
            return False
        return not self._alive(int(pid_text), int(ticks_text))

    def _open(self, entry: os.DirEntry[str]) -> Worker | None:
        path = entry.path
        try:
            regular = entry.is_file(follow_symlinks=False)
        except OSError:
            return None
        if not regular:
            self._unreadable(entry, "spool.not_a_file", reason="not a regular file")
            return None
        if path in self._bad and self._bad[path] == _mtime(path):
            return None  # same damaged file as last time: already counted and logged
        try:
            reader = SpoolReader(path)
        except SpoolNotReady:
            if self._owner_gone(entry.name):
                self._remove(path, "never finished")  # its writer died creating it
            return None  # else being created right now: next poll
        except SpoolFormatError as exc:
            self._unreadable(entry, "spool.unreadable", error=str(exc))
            if self._owner_gone(entry.name):
                self._remove(path, "unreadable")
            return None
        self._bad.pop(path, None)
        worker = Worker(self._free_index(), reader, reader.header())
        self.workers[path] = worker
        return worker

    def _remove(self, path: str, reason: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("spool.remove_failed", path=path, error=str(exc))
            return
        self._bad.pop(path, None)
        log.info("spool.removed", path=path, reason=reason)

    def retire(self, worker: Worker) -> None:
        """Forget a dead worker whose spool was drained, and remove its file."""
        path = worker.reader.path
        self.workers.pop(path, None)
        h = worker.header
        self.retired_lost += worker.last_lost + h.slots_exhausted + h.write_errors
        worker.reader.close()
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass  # removed behind our back (by an operator, or another sidecar)
        except OSError as exc:
            log.warning("spool.remove_failed", path=path, error=str(exc))

    def live(self) -> list[Worker]:
        return [w for w in list(self.workers.values()) if w.alive]  # list(): polls mutate it

    def close(self) -> None:
        for worker in self.workers.values():
            worker.reader.close()
        self.workers.clear()


def _mtime(path: str) -> int | None:
    try:
        return os.lstat(path).st_mtime_ns
    except OSError:
        return None
