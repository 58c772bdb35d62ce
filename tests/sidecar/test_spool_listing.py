"""The registry lists the spool directory again only when it changed: a steady server's poll
costs one ``stat`` there, and a spool made since the last listing is still found."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from support.sidecar_support import FAKE_PID_BASE, FakeProc, make_spool

from wsgiwatch.sidecar.workers import LISTING_SETTLED_NS, WorkerRegistry

P1, P2, P3 = (FAKE_PID_BASE + n for n in range(21, 24))


@pytest.fixture
def registry(spool_dir: str, proc: FakeProc) -> Iterator[WorkerRegistry]:
    reg = WorkerRegistry(spool_dir, proc.root)
    yield reg
    reg.close()


def spawn(spool_dir: str, proc: FakeProc, pid: int) -> None:
    proc.add(pid, 1000)
    make_spool(spool_dir, pid, start_ticks=1000).unmap()


def settle(directory: str) -> None:
    """Date the directory's last change back past LISTING_SETTLED_NS, as if it had been
    made a while ago (a listing is trusted only then)."""
    past = time.time_ns() - 2 * LISTING_SETTLED_NS
    os.utime(directory, ns=(past, past))


def test_an_unchanged_directory_is_not_listed_again(
    spool_dir: str, proc: FakeProc, registry: WorkerRegistry
) -> None:
    spawn(spool_dir, proc, P1)
    settle(spool_dir)
    registry.refresh()
    assert registry.listings == 1 and len(registry.live()) == 1
    for _ in range(3):
        registry.refresh()
    assert registry.listings == 1 and len(registry.live()) == 1
    proc.kill(P1)  # liveness is still checked on every refresh, listing or not
    registry.refresh()
    assert registry.listings == 1 and registry.live() == []


def test_a_spool_made_since_the_last_listing_is_found(
    spool_dir: str, proc: FakeProc, registry: WorkerRegistry
) -> None:
    spawn(spool_dir, proc, P1)
    settle(spool_dir)
    registry.refresh()
    spawn(spool_dir, proc, P2)  # the directory's mtime moves
    registry.refresh()
    assert registry.listings == 2
    assert sorted(w.pid for w in registry.live()) == [P1, P2]


def test_a_change_that_keeps_the_mtime_is_still_seen(
    spool_dir: str, proc: FakeProc, registry: WorkerRegistry
) -> None:
    """A spool made in the same tick of the filesystem's clock as the listing leaves the
    mtime as it was (forged here with utime): the ctime still moves, and is compared too."""
    spawn(spool_dir, proc, P1)
    settle(spool_dir)
    registry.refresh()
    before = os.stat(spool_dir)
    time.sleep(0.01)  # (the ctime of the utime below is then later than the listing's)
    spawn(spool_dir, proc, P2)
    os.utime(spool_dir, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(spool_dir).st_mtime_ns == before.st_mtime_ns
    registry.refresh()
    assert sorted(w.pid for w in registry.live()) == [P1, P2]


def test_a_directory_changed_just_now_is_listed_on_every_refresh(
    spool_dir: str, proc: FakeProc, registry: WorkerRegistry
) -> None:
    """Until its mtime is older than LISTING_SETTLED_NS, a listing may have missed a change
    made in the same clock tick: the directory is listed again each time."""
    spawn(spool_dir, proc, P1)  # the directory changes now
    for _ in range(3):
        registry.refresh()
    assert registry.listings == 3 and len(registry.live()) == 1


def test_a_spool_not_ready_yet_is_looked_at_again_without_a_change(
    spool_dir: str, proc: FakeProc, registry: WorkerRegistry
) -> None:
    """An entry that did not open (its header still unwritten) keeps the directory listed
    on each refresh, so the spool is opened once ready although the directory is still."""
    spawn(spool_dir, proc, P1)
    proc.add(P3, 1000)
    writer = make_spool(spool_dir, P3, start_ticks=1000, magic=b"\0" * 8)
    settle(spool_dir)
    registry.refresh()
    assert [w.pid for w in registry.live()] == [P1]
    writer.mm[:8] = b"WSGIWTCH"  # the writer finishes its header (magic last)
    writer.unmap()
    registry.refresh()
    assert registry.listings == 2
    assert sorted(w.pid for w in registry.live()) == [P1, P3]


def test_a_directory_replaced_by_another_is_listed(
    spool_dir: str, proc: FakeProc, registry: WorkerRegistry
) -> None:
    spawn(spool_dir, proc, P1)
    settle(spool_dir)
    registry.refresh()
    os.rename(spool_dir, spool_dir + ".old")
    os.mkdir(spool_dir, 0o700)
    spawn(spool_dir, proc, P2)
    settle(spool_dir)  # even with an old mtime: another inode
    try:
        registry.refresh()
        assert [w.pid for w in registry.live()] == [P2]
    finally:
        for name in os.listdir(spool_dir + ".old"):
            os.unlink(os.path.join(spool_dir + ".old", name))
        os.rmdir(spool_dir + ".old")
