"""The worker processes behind the spool files: discovery, stable indexes, retirement.

A spool names its process by pid and start time, so a recycled pid is never mistaken for
the worker that wrote the file. Each live worker gets the lowest free ``worker`` index (a
Prometheus label that stays small: a replaced worker hands its index to its successor).
The spool of a process that is gone is drained once more, then removed.
"""

from __future__ import annotations

import collections
import logging
import os
from dataclasses import dataclass, field

from wsgiwatch.errors import SpoolFormatError, SpoolNotReady
from wsgiwatch.kernel.procfs import pid_exists, process_start_ticks
from wsgiwatch.sidecar.detect import Run
from wsgiwatch.spool.reader import SlotState, SpoolHeader, SpoolReader, list_spools

logger = logging.getLogger("wsgiwatch.sidecar")

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
    # Counters that outlive polls.
    accepted_total: int = 0
    busy_seconds_total: float = 0.0
    last_lost: int = 0
    rss: int | None = None

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
    """Follows the spool directory: which spools exist, which processes still live."""

    def __init__(self, spool_dir: str, procfs_root: str = "/proc") -> None:
        self.spool_dir = spool_dir
        self.procfs_root = procfs_root
        self.workers: dict[str, Worker] = {}  # spool path -> worker
        self._bad: dict[str, float] = {}  # unreadable spool path -> its mtime when tried
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

    def refresh(self) -> None:
        """Open new spools, mark workers whose process is gone (``alive = False``)."""
        paths = list_spools(self.spool_dir)
        for path in paths:
            worker = self.workers.get(path)
            if worker is None:
                worker = self._open(path)
                if worker is None:
                    continue
            worker.alive = self._alive(worker.pid, worker.reader.start_ticks)
        for path, worker in list(self.workers.items()):
            if path not in paths:  # removed behind our back: nothing more to read
                worker.alive = False

    def _open(self, path: str) -> Worker | None:
        try:
            mtime = os.stat(path).st_mtime
        except OSError:
            return None
        if self._bad.get(path) == mtime:
            return None  # same damaged file as last time: already counted and logged
        try:
            reader = SpoolReader(path)
        except SpoolNotReady:
            return None  # being created right now: next poll
        except SpoolFormatError as exc:
            self._bad[path] = mtime
            self.spool_errors += 1
            logger.warning("spool.unreadable: %s", exc)
            return None
        self._bad.pop(path, None)
        worker = Worker(self._free_index(), reader, reader.header())
        self.workers[path] = worker
        return worker

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
            pass  # someone else (a new worker's stale-spool cleanup) was first
        except OSError as exc:
            logger.warning("spool.remove_failed: %s: %s", path, exc)

    def live(self) -> list[Worker]:
        return [w for w in list(self.workers.values()) if w.alive]  # list(): polls mutate it

    def close(self) -> None:
        for worker in self.workers.values():
            worker.reader.close()
        self.workers.clear()
