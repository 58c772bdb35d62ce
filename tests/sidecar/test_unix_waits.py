"""Unix-socket listeners (gunicorn behind nginx, mod_wsgi daemons) and unseen workers, on
crafted spools and a fake kernel: which connections wait, since when, which finished
request each was, and what the sidecar says when it cannot see a worker's sockets."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from support.sidecar_support import (
    FAKE_PID_BASE,
    MS,
    FakeKernel,
    FakeProc,
    Req,
    S,
    finish,
    make_spool,
    scrape,
    start,
    stop,
    value,
)

from wsgiwatch.kernel import UnixSocket
from wsgiwatch.sidecar.monitor import Monitor
from wsgiwatch.spool.writer import SpoolWriter

W1 = FAKE_PID_BASE + 21
SOCK = "/run/gunicorn/app.sock"
LISTENER = UnixSocket("LISTEN", SOCK, 600, None, 0, 128)


def conn(inode: int, unread: int = 120) -> UnixSocket:
    """A worker's accepted connection on the listener (it shares the listener's name)."""
    return UnixSocket("ESTABLISHED", SOCK, inode, inode + 1000, unread, 0)


#: The connection of the request being served: gthread has read it whole.
SERVED = conn(63, unread=0)


class Scene:
    def __init__(self, spool_dir: str) -> None:
        self.proc = FakeProc()
        self.t = time.monotonic_ns() - 10 * S
        self.kernel = FakeKernel()
        self.kernel.inodes = {W1: {600, 61, 62, 63}}  # the listener, three connections
        self.proc.add(W1, 1000)
        self.writer: SpoolWriter = make_spool(spool_dir, W1, start_ticks=1000)
        self.monitor = Monitor(
            spool_dir,
            procfs_root=self.proc.root,
            kernel=self.kernel,  # type: ignore[arg-type]
        )

    def at(self, ms: float) -> int:
        return self.t + int(ms * MS)

    def poll_at(self, ms: float, *socks: UnixSocket) -> None:
        self.kernel.mid_ns = self.at(ms)
        self.kernel.unix = [LISTENER, *socks]
        self.monitor.poll()

    def close(self) -> None:
        self.monitor.close()
        self.writer.unmap()
        self.proc.cleanup()


@pytest.fixture
def scene(spool_dir: str) -> Iterator[Scene]:
    s = Scene(spool_dir)
    yield s
    s.close()


def views(scene: Scene) -> dict[str, dict[str, object]]:
    return {v["route"]: dict(v) for v in scene.monitor.recent_requests(60)["requests"]}


def slow_then_two_waiting(scene: Scene, **fast1: int) -> None:
    """/slow runs from T to T+1000 ms; two requests reach the busy worker between the dumps
    at T+100 and T+300 and wait; they run at T+1000 and T+1001."""
    w = scene.writer
    start(w, 0, Req(scene.at(0), 0, "/slow", peer="", peer_port=0))
    scene.poll_at(100)
    scene.poll_at(300, conn(61), conn(62), SERVED)
    stalls = scene.monitor.state()["stalls"]
    assert sorted(s["peer"] for s in stalls) == ["unix inode 61", "unix inode 62"]
    # Aged from the arrival estimate, the middle of (T+100, T+300]: not from the sighting.
    now = time.monotonic_ns()
    for stall in stalls:
        assert abs(stall["age_s"] - (now - scene.at(200)) / 1e9) < 0.05
    stop(w, 0)
    finish(w, Req(scene.at(0), scene.at(1000), "/slow", peer="", peer_port=0))
    finish(w, Req(scene.at(1000), scene.at(1001), "/fast0", peer="", peer_port=0))
    finish(w, Req(scene.at(1001), scene.at(1002), "/fast1", peer="", peer_port=0, **fast1))
    scene.poll_at(1100)


def test_waits_seen_on_a_unix_socket_are_joined_to_the_requests_that_ran(scene: Scene) -> None:
    slow_then_two_waiting(scene)
    v = views(scene)
    assert v["/slow"]["wait_s"] is None  # never seen waiting: nothing says
    for route, entry_ms in (("/fast0", 1000), ("/fast1", 1001)):
        assert v[route]["wait_source"] == "kernel"
        assert v[route]["wait_s"] == pytest.approx((entry_ms - 200) / 1e3, abs=1e-6)
        assert v[route]["blocked"] is True
        assert v[route]["phases"] == {"process": v[route]["wait_s"]}
    m = scrape(scene.monitor)
    assert value(m, "wsgiwatch_hol_blocked_requests_total", blocker_route="/slow") == 2
    # Three requests, each on its own unix connection: counted without the accept hook.
    assert value(m, "wsgiwatch_worker_accepted_total", worker="0") == 3


def test_a_proxy_time_inside_the_window_times_the_wait(scene: Scene) -> None:
    wall_offset = time.time_ns() - time.monotonic_ns()
    slow_then_two_waiting(scene, proxy_wall_ns=scene.at(250) + wall_offset)
    fast1 = views(scene)["/fast1"]
    assert fast1["wait_source"] == "header" and fast1["blocked"] is True
    assert fast1["wait_s"] == pytest.approx(0.751, abs=1e-3)


def test_a_connection_being_served_with_unread_bytes_is_no_stall(scene: Scene) -> None:
    """A mod_wsgi daemon holds only what it serves (it accepts when a thread is free), and
    leaves a few bytes unread: held - busy = 0 connections can be waiting."""
    start(scene.writer, 0, Req(scene.at(0), 0, "/slow"))
    scene.poll_at(100)
    scene.poll_at(300, conn(61, unread=40))
    assert scene.monitor.state()["stalls"] == []
    assert scene.monitor.state()["listeners"] == [
        {"listener": f"unix:{SOCK}", "backlog": 0, "limit": 128}
    ]


def test_a_worker_whose_sockets_cannot_be_seen_is_named_with_why(scene: Scene) -> None:
    scene.kernel.blind = {W1: "not_dumpable"}
    scene.poll_at(100)
    (unseen,) = scene.monitor.health()["kernel_unseen_workers"]
    assert (unseen["worker"], unseen["pid"], unseen["reason"]) == (0, W1, "not_dumpable")
    assert "CoreDumpDirectory" in unseen["remedy"]
    assert scene.monitor.state()["kernel_unseen_workers"] == [unseen]
    m = scrape(scene.monitor)
    assert value(m, "wsgiwatch_kernel_unseen_workers", reason="not_dumpable") == 1
    assert value(m, "wsgiwatch_kernel_unseen_workers", reason="other_netns") == 0
    scene.kernel.blind = {}
    scene.poll_at(200)
    assert scene.monitor.health()["kernel_unseen_workers"] == []


def test_a_proxy_time_alone_counts_only_in_a_worker_seen_accepting_while_full(
    scene: Scene,
) -> None:
    """A header says how long, not where: in a worker never seen holding a waiting
    connection (gunicorn sync: its queue is the kernel backlog) it blames nobody."""
    wall_offset = time.time_ns() - time.monotonic_ns()
    w = scene.writer
    finish(w, Req(scene.at(0), scene.at(1000), "/slow", peer="", peer_port=0))
    late = Req(scene.at(1000), scene.at(1001), "/queued", peer="10.0.0.1", peer_port=5)
    late.proxy_wall_ns = scene.at(200) + wall_offset
    finish(w, late)
    scene.poll_at(1100)
    queued = views(scene)["/queued"]
    assert queued["wait_source"] == "header" and queued["blocked"] is False
    assert queued["phases"] == {}  # a proxy's time alone cannot be split
    # Once the worker is seen holding a waiting connection while full, it counts.
    start(w, 0, Req(scene.at(1200), 0, "/slow", peer="", peer_port=0))
    scene.poll_at(1300, conn(61), SERVED)
    stop(w, 0)
    again = Req(scene.at(2200), scene.at(2201), "/queued2", peer="10.0.0.1", peer_port=6)
    again.proxy_wall_ns = scene.at(1500) + wall_offset
    finish(w, Req(scene.at(1200), scene.at(2200), "/slow", peer="", peer_port=0))
    finish(w, again)
    scene.poll_at(2300)
    assert views(scene)["/queued2"]["blocked"] is True
