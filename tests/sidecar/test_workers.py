"""The worker registry on a spool directory: stable indexes, liveness by pid and start time,
damaged files, retirement."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs
from support.sidecar_support import FAKE_PID_BASE, FakeProc, make_spool

from wsgiwatch.kernel.procfs import process_start_ticks
from wsgiwatch.sidecar.workers import WorkerRegistry
from wsgiwatch.spool import layout as fmt

P1, P2, P3, P4, P5 = (FAKE_PID_BASE + n for n in range(1, 6))


@pytest.fixture
def registry(spool_dir: str, proc: FakeProc) -> Iterator[WorkerRegistry]:
    reg = WorkerRegistry(spool_dir, proc.root)
    yield reg
    reg.close()


def spawn(spool_dir: str, proc: FakeProc, pid: int, ticks: int = 1000, **kw: object) -> str:
    proc.add(pid, ticks)
    writer = make_spool(spool_dir, pid, start_ticks=ticks, **kw)  # type: ignore[arg-type]
    writer.unmap()
    return writer.path


def indexes(registry: WorkerRegistry) -> dict[int, int]:
    return {w.pid: w.index for w in registry.workers.values()}


def dead_pid() -> int:
    """The pid of a process we started and waited for: gone (pids are not reused this fast)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# --- indexes --------------------------------------------------------------------------------
def test_lowest_free_index_assigned_and_reused_after_retirement(
    spool_dir: str, proc: FakeProc, registry: WorkerRegistry
) -> None:
    for pid in (P1, P2, P3):
        spawn(spool_dir, proc, pid)
    registry.refresh()
    assert sorted(indexes(registry).values()) == [0, 1, 2]
    assert all(w.alive for w in registry.workers.values())
    middle = next(w for w in registry.workers.values() if w.index == 1)

    proc.kill(middle.pid)
    registry.refresh()
    assert not middle.alive
    assert middle in registry.workers.values()  # kept until drained and retired
    assert middle not in registry.live()
    path = middle.reader.path
    registry.retire(middle)
    assert not os.path.exists(path)

    # A replacement takes the freed index; the next one after that takes a new one.
    spawn(spool_dir, proc, P4)
    registry.refresh()
    assert indexes(registry)[P4] == 1
    spawn(spool_dir, proc, P5)
    registry.refresh()
    assert indexes(registry)[P5] == 3
    assert len(registry.live()) == 4


def test_a_dead_but_unretired_worker_keeps_its_index(
    spool_dir: str, proc: FakeProc, registry: WorkerRegistry
) -> None:
    spawn(spool_dir, proc, P1)
    registry.refresh()
    proc.kill(P1)
    registry.refresh()
    spawn(spool_dir, proc, P2)
    registry.refresh()
    assert indexes(registry) == {P1: 0, P2: 1}


def test_files_that_are_not_spools_are_ignored(
    spool_dir: str, proc: FakeProc, registry: WorkerRegistry
) -> None:
    with open(os.path.join(spool_dir, "notes.txt"), "w") as f:
        f.write("hello")
    registry.refresh()
    assert registry.workers == {}
    assert registry.spool_errors == 0


# --- liveness -------------------------------------------------------------------------------
def test_a_real_worker_process_is_alive_then_dead_then_retired(spool_dir: str) -> None:
    code = (
        "import sys; from wsgiwatch.spool.writer import open_spool; "
        "w = open_spool(sys.argv[1], slot_count=2, ring_capacity=4, accept_capacity=2); "
        "print(w.path, flush=True); sys.stdin.read()"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code, spool_dir],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    registry = WorkerRegistry(spool_dir)
    try:
        assert child.stdout is not None and child.stdin is not None
        path = child.stdout.readline().strip()
        registry.refresh()
        (worker,) = registry.workers.values()
        assert worker.pid == child.pid != os.getpid()
        assert worker.reader.start_ticks == process_start_ticks(child.pid)
        assert worker.ppid == os.getpid()
        assert worker.alive and worker.index == 0

        child.stdin.close()
        assert child.wait(timeout=10) == 0
        registry.refresh()
        assert not worker.alive
        assert registry.live() == []
        assert os.path.exists(path)  # drained first: the registry does not remove it itself
        registry.retire(worker)
        assert not os.path.exists(path)
        assert registry.workers == {}
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        for stream in (child.stdin, child.stdout):
            if stream is not None:
                stream.close()
        registry.close()


def test_a_spool_whose_process_is_gone_is_not_alive(spool_dir: str) -> None:
    gone = dead_pid()
    ticks = process_start_ticks(os.getpid()) or 1
    make_spool(spool_dir, gone, start_ticks=ticks).unmap()
    registry = WorkerRegistry(spool_dir)
    registry.refresh()
    (worker,) = registry.workers.values()
    assert worker.pid == gone
    assert not worker.alive
    path = worker.reader.path
    registry.retire(worker)
    assert not os.path.exists(path)


def test_without_start_ticks_liveness_falls_back_to_the_pid(spool_dir: str) -> None:
    gone = dead_pid()
    make_spool(spool_dir, gone, start_ticks=0).unmap()
    make_spool(spool_dir, os.getpid(), start_ticks=0).unmap()
    registry = WorkerRegistry(spool_dir)
    registry.refresh()
    alive = {w.pid: w.alive for w in registry.workers.values()}
    assert alive == {gone: False, os.getpid(): True}
    registry.close()


def test_a_recycled_pid_with_another_start_time_is_dead(spool_dir: str) -> None:
    me = os.getpid()
    ticks = process_start_ticks(me)
    assert ticks
    make_spool(spool_dir, me, start_ticks=ticks + 7).unmap()
    registry = WorkerRegistry(spool_dir)
    registry.refresh()
    (worker,) = registry.workers.values()
    assert not worker.alive
    registry.close()
    # The same pid with its real start time is alive.
    make_spool(spool_dir, me, start_ticks=ticks).unmap()
    registry = WorkerRegistry(spool_dir)
    registry.refresh()
    assert {w.reader.start_ticks: w.alive for w in registry.workers.values()} == {
        ticks + 7: False,
        ticks: True,
    }
    registry.close()


def test_a_spool_removed_behind_our_back_is_dead_and_retires_quietly(
    spool_dir: str, proc: FakeProc, registry: WorkerRegistry
) -> None:
    path = spawn(spool_dir, proc, P1)
    registry.refresh()
    (worker,) = registry.workers.values()
    assert worker.alive
    os.unlink(path)
    registry.refresh()
    assert not worker.alive  # its process lives, but there is nothing more to read
    # The mapping outlives the file: the last records can still be read.
    assert worker.reader.read_records().records == []
    with capture_logs() as logs:
        registry.retire(worker)
    assert registry.workers == {}
    assert logs == []


# --- damaged files --------------------------------------------------------------------------
def _damaged(spool_dir: str) -> dict[str, str]:
    """Three damaged spools; returns path by kind."""
    paths = {}
    truncated = os.path.join(spool_dir, fmt.spool_name(P1, 1))
    with open(truncated, "wb") as f:
        f.write(fmt.MAGIC + b"\0" * 40)
    paths["truncated"] = truncated
    bad = make_spool(spool_dir, P2, start_ticks=2, magic=b"NOTSPOOL")
    bad.unmap()
    paths["magic"] = bad.path
    old = make_spool(spool_dir, P3, start_ticks=3, version=fmt.VERSION + 1)
    old.unmap()
    paths["version"] = old.path
    return paths


def test_damaged_spools_are_counted_and_logged_once(
    spool_dir: str, proc: FakeProc, registry: WorkerRegistry
) -> None:
    for pid in (P1, P2, P3):
        proc.add(pid, pid - FAKE_PID_BASE)
    paths = _damaged(spool_dir)
    with capture_logs() as logs:
        registry.refresh()
        registry.refresh()
        registry.refresh()
    assert registry.workers == {}
    assert registry.spool_errors == 3
    assert sorted(e["reason"] for e in logs) == ["magic", "short", "version"]
    assert [e["event"] for e in logs] == ["spool.unreadable"] * 3
    assert all(e["log_level"] == "warning" for e in logs)
    logged = {e["path"]: e["error"] for e in logs}
    assert set(logged) == set(paths.values())
    for kind, path in paths.items():
        assert {"truncated": "shorter", "magic": "bad magic", "version": "version"}[kind] in (
            logged[path]
        )
    assert sorted(os.listdir(spool_dir)) == sorted(os.path.basename(p) for p in paths.values())


def test_a_spool_being_created_is_no_error_and_is_opened_once_ready(
    spool_dir: str, proc: FakeProc, registry: WorkerRegistry
) -> None:
    proc.add(P2, 2)
    writer = make_spool(spool_dir, P2, start_ticks=2, magic=b"\0" * 8)
    registry.refresh()
    registry.refresh()
    assert registry.workers == {}
    assert registry.spool_errors == 0  # its writer is still at work: not damaged
    # The writer finishes its header (magic last); on tmpfs the mtime need not move.
    writer.mm[0:8] = fmt.MAGIC
    writer.unmap()
    registry.refresh()
    assert [w.pid for w in registry.live()] == [P2]
    assert registry.spool_errors == 0


def test_a_damaged_spool_replaced_by_a_good_one_at_the_same_path_is_opened(
    spool_dir: str, proc: FakeProc, registry: WorkerRegistry
) -> None:
    proc.add(P3, 3)
    make_spool(spool_dir, P3, start_ticks=3, version=99).unmap()
    registry.refresh()
    assert registry.spool_errors == 1
    good = make_spool(spool_dir, P3, start_ticks=3)
    good.unmap()
    st = os.stat(good.path)
    os.utime(good.path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    registry.refresh()
    assert [w.pid for w in registry.live()] == [P3]


# --- cleaning up (the sidecar's job: a worker only touches its own spool) -------------------
def test_unreadable_spools_of_gone_processes_are_removed_others_kept(
    spool_dir: str, proc: FakeProc, registry: WorkerRegistry
) -> None:
    """Empty files named like spools: each is unreadable; the process its name gives decides
    whether it is removed."""
    proc.add(P1, 1000)
    gone = dead_pid()
    names = {
        "alive": fmt.spool_name(P1, 1000),  # its process lives: kept, counted
        "recycled": fmt.spool_name(P1, 999),  # same pid, another start: gone
        "dead": fmt.spool_name(gone, 12345),
        "no_ticks_dead": fmt.spool_name(gone, 0),  # no start time known: by the pid alone
        "not_a_spool": f"{gone}-12345.txt",
        "bad_name": "worker-x.spool",  # names no process: kept, counted
    }
    for name in names.values():
        with open(os.path.join(spool_dir, name), "wb"):
            pass
    with capture_logs() as logs:
        registry.refresh()
        registry.refresh()
    assert set(os.listdir(spool_dir)) == {
        names["alive"],
        names["not_a_spool"],
        names["bad_name"],
    }
    removed = sorted(os.path.basename(e["path"]) for e in logs if e["event"] == "spool.removed")
    assert removed == sorted(names[k] for k in ("recycled", "dead", "no_ticks_dead"))
    assert registry.spool_errors == 5  # each file counted once, however many polls
    assert registry.workers == {}


def test_a_drained_spool_of_a_gone_process_is_removed_and_a_new_one_gets_its_index(
    spool_dir: str, proc: FakeProc, registry: WorkerRegistry
) -> None:
    first = spawn(spool_dir, proc, P1)
    registry.refresh()
    (worker,) = registry.workers.values()
    proc.kill(P1)
    registry.refresh()
    assert not worker.alive
    registry.retire(worker)
    assert not os.path.exists(first)
    spawn(spool_dir, proc, P2)
    registry.refresh()
    assert indexes(registry) == {P2: worker.index}


@pytest.mark.parametrize("kind", ["fifo", "symlink", "directory"])
def test_entries_that_are_not_regular_files_are_never_opened(
    spool_dir: str, proc: FakeProc, registry: WorkerRegistry, kind: str
) -> None:
    """Opening a FIFO for reading blocks until a writer comes: the registry must not even
    try. A symlink may point anywhere, a directory is no spool."""
    gone = dead_pid()
    path = os.path.join(spool_dir, fmt.spool_name(gone, 1))
    target = spawn(spool_dir, proc, P1)  # a good spool a symlink could lead to
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "symlink":
        os.symlink(target, path)
    else:
        os.mkdir(path)
    with capture_logs() as logs:
        # In a thread, so that a FIFO opened for reading fails the test instead of hanging it.
        polls = threading.Thread(target=lambda: [registry.refresh() for _ in range(3)])
        polls.daemon = True
        polls.start()
        polls.join(10)
    assert not polls.is_alive(), "refresh() hangs on a non-regular file"
    assert [w.pid for w in registry.live()] == [P1]
    assert [(e["event"], e["path"]) for e in logs] == [("spool.not_a_file", path)]
    assert registry.spool_errors == 1
    assert (
        stat.S_IFMT(os.lstat(path).st_mode)
        == {
            "fifo": stat.S_IFIFO,
            "symlink": stat.S_IFLNK,
            "directory": stat.S_IFDIR,
        }[kind]
    )  # left alone: whoever put it there may want to see it
