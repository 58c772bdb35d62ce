"""The worker processes behind the spool files: discovery, stable indexes, retirement.

A spool names its process by pid and start time, so a recycled pid is never mistaken for
the worker that wrote the file. Each live worker gets the lowest free ``worker`` index (a
Prometheus label that stays small: a replaced worker hands its index to its successor).
The spool of a process that is gone is drained once more, then removed.
"""

from __future__ import annotations

import collections
import os
import time
from dataclasses import dataclass, field

import structlog

from wsgiwatch.errors import SpoolFormatError, SpoolNotReady
from wsgiwatch.kernel.procfs import ExitWatch, pid_exists, process_running
from wsgiwatch.sidecar.detect import Interval, Run
from wsgiwatch.spool import fate
from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.reader import SpoolReader
from wsgiwatch.spool.records import SlotState, SpoolHeader

log = structlog.get_logger("wsgiwatch.sidecar")

#: A spool whose header is still unwritten this long after its last change is no spool
#: being created but a file that will stay so (all zeroes): it is counted as unreadable.
NOT_READY_AFTER_S = 5.0

#: A directory listing is trusted (not made again) once the directory's mtime is this much
#: older than the listing: a change within the same tick of the filesystem's clock would
#: not change the mtime (tmpfs and ext4 follow a kernel clock of a few ms; FAT keeps 2 s).
LISTING_SETTLED_NS = 2_500_000_000

#: Finished runs kept per worker, to find the blockers of requests that waited long.
HISTORY_RUNS = 4096


@dataclass
class Tally:
    """What spools say was lost or refused (sums over workers)."""

    dropped: int = 0  # records: overwritten unread, not written, or lost with a spool
    resyncs: int = 0  # implausible heads or cursors the reader resynchronised
    rejected_times: int = 0  # accept or proxy times the worker refused as implausible
    spools_lost: int = 0  # spools removed or truncated under their worker

    def add(self, other: Tally) -> None:
        self.dropped += other.dropped
        self.resyncs += other.resyncs
        self.rejected_times += other.rejected_times
        self.spools_lost += other.spools_lost


@dataclass(eq=False)
class Worker:
    index: int
    reader: SpoolReader
    header: SpoolHeader
    inode: int  # of the file when opened: a file made anew at the same path is another
    alive: bool = True  # its process lives and its spool is still there
    gone: bool = False  # its process ended (not just its file removed)
    #: Its finished requests, newest last: the records as read (each is an Interval).
    history: collections.deque[Interval] = field(
        default_factory=lambda: collections.deque(maxlen=HISTORY_RUNS)
    )
    slots: list[SlotState] = field(default_factory=list)  # running now
    stuck: list[SlotState] = field(default_factory=list)  # busy far longer than any request
    running: list[Run] = field(default_factory=list)
    last_lost: int = 0  # records its reader found overwritten, as its header counts them
    rss: int | None = None
    #: Its finished requests by where their queue wait came from (hook, kernel, ...).
    wait_sources: collections.Counter[str] = field(default_factory=collections.Counter)
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

    def tally(self, *, with_process_totals: bool = True) -> Tally:
        """What this spool says was lost. The losses of earlier spools of the same process
        are carried from file to file by the worker: ``with_process_totals=False`` leaves
        them out, for a spool whose process lives on in a newer file."""
        h = self.header
        carried = with_process_totals
        return Tally(
            dropped=self.last_lost
            + h.slots_exhausted
            + h.write_errors
            + (h.records_lost_with_spool if carried else 0),
            resyncs=self.reader.resyncs,
            rejected_times=h.times_rejected,
            spools_lost=h.spools_lost if carried else 0,
        )

    def recent_runs(self) -> list[Interval]:
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
        self.directory_error: str | None = None  # why the directory cannot be listed now
        self.spool_errors = 0  # unreadable files, each once (the reason is in its log event)
        self.retired = Tally()  # what spools no longer followed said
        self._listing: dict[str, os.DirEntry[str]] = {}  # the directory's last listing
        self._listing_key: tuple[int, int, int, int] | None = None  # None: list again
        self.listings = 0  # how many times the directory was listed (for tests)
        # Liveness of the workers followed so far, one poll(2) per refresh (see ExitWatch).
        self._exits = ExitWatch(procfs_root)
        self._exits_seen: set[tuple[int, int]] = set()

    def _alive(self, pid: int, start_ticks: int, *, follow: bool = True) -> bool:
        """Whether the process runs; ``follow``: a worker's, so worth a pidfd."""
        if start_ticks:
            if (pid, start_ticks) in self._exits_seen:
                return False
            if follow and self._exits.follow(pid, start_ticks):
                return True  # followed by a pidfd, not among those exited at this refresh
            return process_running(pid, start_ticks, self.procfs_root)
        return pid_exists(pid)

    def _free_index(self) -> int:
        used = {w.index for w in self.workers.values()}
        index = 0
        while index in used:
            index += 1
        return index

    def _entries(self) -> dict[str, os.DirEntry[str]]:
        """The spool files in the directory: listed again only when the directory changed
        since the last listing (see :meth:`_listing_stands`), which on a steady server is
        never: a poll then costs one ``stat`` here, not a listing."""
        try:
            st = os.stat(self.spool_dir)
            if self._listing_stands(st):
                return self._listing
            listed_at_ns = time.time_ns()
            self.listings += 1
            with os.scandir(self.spool_dir) as it:
                entries = {e.path: e for e in it if e.name.endswith(fmt.SUFFIX)}
        except OSError as exc:
            self._listing_key = None
            if self.directory_error is None:
                # Workers write nothing there now: say so once, not every poll.
                log.warning("spool.directory_missing", path=self.spool_dir, error=str(exc))
            self.directory_error = f"spool directory {self.spool_dir}: {exc.strerror or exc}"
            return {}
        if self.directory_error is not None:
            self.directory_error = None
            log.info("spool.directory_back", path=self.spool_dir)
        self._listing = entries
        # A change in the same tick of the filesystem's clock as a listing leaves the
        # directory's mtime as it was: a listing is trusted only once the directory's
        # mtime is older than it by more than any such tick (coarse kernel clocks, 1 s or
        # 2 s timestamps on some filesystems); until then, the directory is listed again.
        recent = listed_at_ns - st.st_mtime_ns < LISTING_SETTLED_NS
        self._listing_key = None if recent else _dir_key(st)
        return entries

    def _listing_stands(self, st: os.stat_result) -> bool:
        """Whether the last listing still holds: the same directory (device, inode), not
        modified since (mtime, ctime), and every entry it found opened as a worker (one
        not ready yet, or unreadable, is looked at again with fresh ``stat`` data)."""
        if self._listing_key is None or _dir_key(st) != self._listing_key:
            return False
        return all(path in self.workers for path in self._listing)

    def refresh(self) -> None:
        """Open new spools, mark workers whose process is gone (``alive = False``)."""
        self._exits_seen = self._exits.exited()
        entries = self._entries()
        for path, entry in sorted(entries.items()):
            worker = self.workers.get(path)
            if worker is None:
                worker = self._open(entry)
                if worker is None:
                    continue
            worker.alive = self._alive(worker.pid, worker.reader.start_ticks)
            worker.gone = not worker.alive
        for path, worker in list(self.workers.items()):
            if path not in entries or _inode(entries[path]) != worker.inode:
                # Removed behind our back (the directory with it, perhaps), or replaced by a
                # new file its worker made after losing this one: nothing more to read here,
                # but its process may live on (the new file is opened once this one retires).
                worker.alive = False
                worker.gone = not self._alive(worker.pid, worker.reader.start_ticks)
        for path in [p for p in self._bad if p not in entries]:
            del self._bad[path]

    @property
    def unreadable(self) -> int:
        """Entries named like spools that cannot be read, now."""
        return len(self._bad)

    def _unreadable(self, entry: os.DirEntry[str], event: str, reason: str, error: str) -> None:
        """Count and log an unreadable entry once, again only if it changes."""
        try:
            mtime = entry.stat(follow_symlinks=False).st_mtime_ns
        except OSError:
            return  # gone meanwhile
        if self._bad.get(entry.path) == mtime:
            return
        self._bad[entry.path] = mtime
        self.spool_errors += 1
        log.warning(event, path=entry.path, reason=reason, error=error)

    def _owner_gone(self, name: str) -> bool:
        """Whether the process a spool's name gives (``PID-STARTTICKS.spool``) is gone.
        A name that is not of that form names no process we could ask about: never gone."""
        pid_text, _, ticks_text = name[: -len(fmt.SUFFIX)].partition("-")
        if not (pid_text.isdigit() and ticks_text.isdigit()):
            return False
        return not self._alive(int(pid_text), int(ticks_text), follow=False)

    def _open(self, entry: os.DirEntry[str]) -> Worker | None:
        path = entry.path
        try:
            regular = entry.is_file(follow_symlinks=False)
        except OSError:
            return None
        if not regular:
            self._unreadable(entry, "spool.not_a_file", "not_regular", "not a regular file")
            return None
        if path in self._bad and self._bad[path] == _mtime(path):
            return None  # same damaged file as last time: already counted and logged
        try:
            reader = SpoolReader(path)
        except SpoolNotReady as exc:
            if self._owner_gone(entry.name):
                self._remove(path, "never finished")  # its writer died creating it
            elif exc.age_s > NOT_READY_AFTER_S:
                # A writer fills its header within microseconds of creating the file: one
                # that stays unready (all zeroes, say) is no spool being made.
                self._unreadable(entry, "spool.unreadable", exc.reason, str(exc))
            return None  # else being created right now: next poll
        except SpoolFormatError as exc:
            self._unreadable(entry, "spool.unreadable", exc.reason, str(exc))
            if self._owner_gone(entry.name):
                self._remove(path, "unreadable")
            return None
        self._bad.pop(path, None)
        worker = Worker(self._free_index(), reader, reader.header(), _inode(entry))
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

    def _forget(self, worker: Worker) -> None:
        self.workers.pop(worker.reader.path, None)
        key = (worker.pid, worker.reader.start_ticks)
        if not any((w.pid, w.reader.start_ticks) == key for w in self.workers.values()):
            self._exits.forget(*key)  # (unless a newer spool of the same process is followed)
        self.retired.add(worker.tally(with_process_totals=worker.gone))
        worker.reader.close()

    def totals(self) -> Tally:
        """Losses over every spool followed so far."""
        total = Tally()
        total.add(self.retired)
        for worker in list(self.workers.values()):
            total.add(worker.tally())
        return total

    def drop(self, worker: Worker, error: SpoolFormatError) -> None:
        """Stop following a spool that failed under the reader (truncated or overwritten
        while we read it): counted and logged once; reopened, under a new index, once the
        file changes into one that reads."""
        path = worker.reader.path
        self._forget(worker)
        self.spool_errors += 1
        mtime = _mtime(path)
        if mtime is not None:
            self._bad[path] = mtime
        log.warning(
            "spool.read_failed",
            path=path,
            worker=worker.index,
            reason=error.reason,
            error=str(error),
        )

    def retire(self, worker: Worker) -> None:
        """Forget a dead worker whose spool was drained, and remove its file (and the note
        on its fate it may have left) unless a new file has taken its name."""
        path = worker.reader.path
        self._forget(worker)
        try:
            ours = os.lstat(path).st_ino == worker.inode
        except OSError:
            ours = False  # removed behind our back
        doomed = ([path] if ours else []) + ([fate.note_path(path)] if worker.gone else [])
        for name in doomed:
            try:
                os.unlink(name)
            except FileNotFoundError:
                pass  # (a note) never written: most workers die without a word
            except OSError as exc:
                log.warning("spool.remove_failed", path=name, error=str(exc))

    def live(self) -> list[Worker]:
        return [w for w in list(self.workers.values()) if w.alive]  # list(): polls mutate it

    def close(self) -> None:
        for worker in self.workers.values():
            worker.reader.close()
        self.workers.clear()
        self._exits.close()


def _dir_key(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


def _inode(entry: os.DirEntry[str]) -> int:
    try:
        return entry.inode()
    except OSError:
        return 0


def _mtime(path: str) -> int | None:
    try:
        return os.lstat(path).st_mtime_ns
    except OSError:
        return None
