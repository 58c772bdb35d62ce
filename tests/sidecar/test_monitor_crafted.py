"""The monitor on crafted spools (and, where said, a fake kernel): verdicts, blame, metrics.

Every scenario is written on one clock: ``T`` is a moment a few seconds ago; requests are
placed on the scoreboard and in the ring exactly as the middleware would place them.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Iterator

import pytest
import structlog
from support.sidecar_support import (
    FAKE_PID_BASE,
    FAKE_PPID,
    MS,
    FakeKernel,
    FakeProc,
    Req,
    S,
    accept,
    finish,
    make_spool,
    scrape,
    start,
    tcp,
    value,
)

from wsgiwatch.sidecar.monitor import Monitor
from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.writer import SpoolWriter

W1, W2, W3 = FAKE_PID_BASE + 11, FAKE_PID_BASE + 12, FAKE_PID_BASE + 13
HOOK = fmt.SOURCE_HOOK


class Scene:
    """A spool directory, a fake procfs where our fake workers live, and a clock origin."""

    def __init__(self, spool_dir: str) -> None:
        self.dir = spool_dir
        self.proc = FakeProc()
        self.t = time.monotonic_ns() - 10 * S
        self.writers: list[SpoolWriter] = []
        self.monitors: list[Monitor] = []

    def at(self, ms: float) -> int:
        return self.t + int(ms * MS)

    def worker(
        self,
        pid: int,
        *,
        capacity: int = 1,
        ppid: int = FAKE_PPID,
        accept_hook: bool = False,
        created_ms: float | None = None,
        ring: int = 64,
    ) -> SpoolWriter:
        self.proc.add(pid, 1000)
        writer = make_spool(
            self.dir,
            pid,
            start_ticks=1000,
            ppid=ppid,
            capacity=capacity,
            accept_hook=accept_hook,
            created_mono_ns=None if created_ms is None else self.at(created_ms),
            ring_capacity=ring,
        )
        self.writers.append(writer)
        return writer

    def monitor(self, **kw: object) -> Monitor:
        kw.setdefault("use_kernel", False)
        monitor = Monitor(self.dir, procfs_root=self.proc.root, **kw)  # type: ignore[arg-type]
        self.monitors.append(monitor)
        return monitor

    def close(self) -> None:
        for monitor in self.monitors:
            monitor.close()
        for writer in self.writers:
            if not writer.mm.closed:
                writer.unmap()
        self.proc.cleanup()


@pytest.fixture
def scene(spool_dir: str) -> Iterator[Scene]:
    s = Scene(spool_dir)
    yield s
    s.close()


def slow_then_fast(scene: Scene, w: SpoolWriter, fast: int = 3) -> list[Req]:
    """A 1 s request on /slow from T, and ``fast`` requests accepted at T+100, +200, ... ms
    (accept hook) that could only start when it ended, one after the other."""
    finish(
        w,
        Req(scene.at(0), scene.at(1000), "/slow", peer_port=1000, source=HOOK, accept_ns=scene.t),
    )
    out = []
    for i in range(fast):
        entry = scene.at(1000 + 10 * i)
        req = Req(
            entry,
            entry + 5 * MS,
            "/fast",
            peer_port=2000 + i,
            source=HOOK,
            accept_ns=scene.at(100 * (i + 1)),
        )
        finish(w, req)
        out.append(req)
    return out


# --- blocking and blame ---------------------------------------------------------------------
def test_fast_requests_behind_a_slow_one_are_blocked_with_blame_on_the_slow_route(
    scene: Scene,
) -> None:
    w = scene.worker(W1)
    fast = slow_then_fast(scene, w)
    monitor = scene.monitor()
    monitor.poll()
    m = scrape(monitor)
    assert value(m, "wsgiwatch_hol_blocked_requests_total", blocker_route="/slow") == 3
    assert not [
        s for s in m["wsgiwatch_hol_blocked_requests_total"] if s.labels["blocker_route"] != "/slow"
    ]
    waits = [(r.entry_ns - r.accept_ns) / 1e9 for r in fast]
    assert waits == pytest.approx([0.9, 0.81, 0.72])
    blamed = {s.labels["blocker_route"]: s.value for s in m["wsgiwatch_hol_blocked_seconds_total"]}
    # Split by overlap: the slow request covered all but the earlier fast requests' 5 ms runs.
    assert blamed["/slow"] == pytest.approx(0.9 + 0.8 + 0.7, rel=0.02)
    assert blamed["/fast"] == pytest.approx(0.005 + 0.01, rel=0.2)
    assert math.fsum(blamed.values()) == pytest.approx(sum(waits))
    assert value(m, "wsgiwatch_queue_wait_source_total", source="hook") == 4


def test_queue_wait_histogram_and_process_phase_come_from_the_hook(scene: Scene) -> None:
    w = scene.worker(W1)
    slow_then_fast(scene, w)
    monitor = scene.monitor()
    monitor.poll()
    m = scrape(monitor)
    assert value(m, "wsgiwatch_queue_wait_seconds_count", route="/fast") == 3
    assert value(m, "wsgiwatch_queue_wait_seconds_sum", route="/fast") == pytest.approx(2.43)
    assert value(m, "wsgiwatch_queue_wait_seconds_bucket", route="/fast", le="0.5") == 0
    assert value(m, "wsgiwatch_queue_wait_seconds_bucket", route="/fast", le="1.0") == 3
    assert value(m, "wsgiwatch_wait_seconds_count", phase="process") == 4
    assert value(m, "wsgiwatch_request_duration_seconds_count", route="/slow") == 1
    assert value(m, "wsgiwatch_request_duration_seconds_sum", route="/slow") == pytest.approx(1.0)


def test_waits_under_the_threshold_are_not_blocked(scene: Scene) -> None:
    w = scene.worker(W1)
    finish(w, Req(scene.at(0), scene.at(1000), "/slow", peer_port=1, source=HOOK, accept_ns=1))
    # Accepted 40 ms before the slow request ended: under the 50 ms threshold.
    finish(
        w,
        Req(scene.at(1000), scene.at(1001), peer_port=2, source=HOOK, accept_ns=scene.at(960)),
    )
    # Exactly at the threshold: not over it.
    finish(
        w,
        Req(scene.at(1050), scene.at(1051), peer_port=3, source=HOOK, accept_ns=scene.at(1000)),
    )
    monitor = scene.monitor(threshold_s=0.05)
    monitor.poll()
    m = scrape(monitor)
    assert m["wsgiwatch_hol_blocked_requests_total"] == []
    assert monitor.incidents() == []
    assert value(m, "wsgiwatch_queue_wait_seconds_count", route="/fast") == 2


def test_a_wait_with_no_other_request_running_blames_nobody(scene: Scene) -> None:
    w = scene.worker(W1)
    finish(w, Req(scene.at(500), scene.at(501), peer_port=2, source=HOOK, accept_ns=scene.at(0)))
    monitor = scene.monitor()
    monitor.poll()
    assert scrape(monitor)["wsgiwatch_hol_blocked_requests_total"] == []
    assert monitor.incidents() == []


def test_blocked_behind_a_request_still_running(scene: Scene) -> None:
    w = scene.worker(W1, capacity=1)
    # The slow request is still on the scoreboard; a fast one got in (e.g. a second thread the
    # server did not declare), after waiting 400 ms.
    start(w, 0, Req(scene.at(0), 0, "/slow", peer_port=1))
    finish(w, Req(scene.at(500), scene.at(510), peer_port=2, source=HOOK, accept_ns=scene.at(100)))
    monitor = scene.monitor()
    monitor.poll()
    (incident,) = monitor.incidents()
    (blocker,) = incident["blockers"]
    assert blocker["route"] == "/slow"
    assert blocker["running"] is True
    assert blocker["duration_s"] is None
    assert blocker["started_s_before_victim"] == pytest.approx(0.5)


def test_a_request_that_waited_while_its_process_had_a_free_slot_is_not_blocked(
    scene: Scene,
) -> None:
    """DESIGN.md: head-of-line blocked = waited over the threshold *while its process was
    running at capacity*. Two slots, one busy: the wait was not head-of-line blocking (the
    process had a free thread all along), so nobody should be blamed for it."""
    w = scene.worker(W1, capacity=2)
    slow_then_fast(scene, w, fast=1)
    monitor = scene.monitor()
    monitor.poll()
    m = scrape(monitor)
    assert m["wsgiwatch_hol_blocked_requests_total"] == []
    assert monitor.incidents() == []


# --- misrouting -----------------------------------------------------------------------------
def test_an_idle_sibling_during_the_wait_makes_it_misrouted(scene: Scene) -> None:
    w = scene.worker(W1)
    scene.worker(W2)  # same server (same ppid), idle throughout
    slow_then_fast(scene, w, fast=2)
    monitor = scene.monitor()
    monitor.poll()
    m = scrape(monitor)
    assert value(m, "wsgiwatch_misrouted_requests_total") == 2
    assert all(i["misrouted"] for i in monitor.incidents())


def test_a_sibling_busy_the_whole_time_is_not_a_free_slot(scene: Scene) -> None:
    w = scene.worker(W1)
    sibling = scene.worker(W2)
    finish(sibling, Req(scene.at(-100), scene.at(1200), "/other-slow", peer_port=9))
    scene.worker(W3, ppid=FAKE_PPID + 1)  # idle, but another server's worker
    slow_then_fast(scene, w, fast=2)
    monitor = scene.monitor()
    monitor.poll()
    m = scrape(monitor)
    assert value(m, "wsgiwatch_misrouted_requests_total") == 0
    assert value(m, "wsgiwatch_hol_blocked_requests_total", blocker_route="/slow") == 2
    assert not any(i["misrouted"] for i in monitor.incidents())


def test_a_sibling_busy_on_the_scoreboard_is_not_a_free_slot(scene: Scene) -> None:
    w = scene.worker(W1)
    sibling = scene.worker(W2)
    start(sibling, 0, Req(scene.at(-100), 0, "/other-slow", peer_port=9))
    slow_then_fast(scene, w, fast=1)
    monitor = scene.monitor()
    monitor.poll()
    assert value(scrape(monitor), "wsgiwatch_misrouted_requests_total") == 0


def test_a_sibling_born_after_the_wait_is_not_a_free_slot(scene: Scene) -> None:
    w = scene.worker(W1)
    scene.worker(W2, created_ms=2000)
    slow_then_fast(scene, w, fast=1)
    monitor = scene.monitor()
    monitor.poll()
    assert value(scrape(monitor), "wsgiwatch_misrouted_requests_total") == 0


def test_a_sibling_whose_process_is_already_gone_is_not_a_free_slot(scene: Scene) -> None:
    """A dead process offers no slot. W2's spool is found with its process already gone
    (crashed and replaced, the spool not yet cleaned up): the sidecar never saw it alive, so it
    cannot claim it was free while W1's request waited."""
    w = scene.worker(W1)
    scene.worker(W2)
    scene.proc.kill(W2)
    slow_then_fast(scene, w, fast=1)
    monitor = scene.monitor()
    monitor.poll()
    assert value(scrape(monitor), "wsgiwatch_hol_blocked_requests_total", blocker_route="/slow")
    assert value(scrape(monitor), "wsgiwatch_misrouted_requests_total") == 0


def test_a_request_seen_running_and_finished_in_one_poll_is_one_run(scene: Scene) -> None:
    """A poll reads the scoreboards first and the rings a few ms later (after the kernel
    dump): a request that finishes in between is seen both on the scoreboard (running) and in
    the ring (finished). It is one request: one blocker in the incident, and in a sibling with
    two slots it fills one of them, not both."""
    w = scene.worker(W1)
    sibling = scene.worker(W2, capacity=2)
    slow = Req(scene.at(0), scene.at(1000), "/slow", peer_port=1)
    start(w, 0, Req(slow.entry_ns, 0, "/slow", peer_port=1, request=7))
    slow.request = 7
    finish(w, slow)
    other = Req(scene.at(-100), scene.at(1100), "/sibling-slow", peer_port=9, request=3)
    start(sibling, 0, Req(other.entry_ns, 0, "/sibling-slow", peer_port=9, request=3))
    finish(sibling, other)
    finish(
        w, Req(scene.at(1000), scene.at(1005), peer_port=2, source=HOOK, accept_ns=scene.at(100))
    )
    monitor = scene.monitor()
    monitor.poll()
    (incident,) = monitor.incidents()
    assert [b["route"] for b in incident["blockers"]] == ["/slow"]
    assert incident["blockers"][0]["blamed_s"] == pytest.approx(0.9)
    assert incident["misrouted"] is True


# --- wait sources ---------------------------------------------------------------------------
def test_kept_alive_requests_do_not_take_their_wait_from_the_stale_accept(scene: Scene) -> None:
    w = scene.worker(W1)
    finish(w, Req(scene.at(0), scene.at(1000), "/slow", peer_port=1))
    # The connection was accepted 5 s earlier; this is its third request. No arrival is known.
    finish(
        w,
        Req(
            scene.at(1000),
            scene.at(1005),
            "/keepalive",
            peer_port=2,
            source=HOOK,
            accept_ns=scene.at(-5000),
            flags=fmt.FLAG_REUSED_CONNECTION,
        ),
    )
    monitor = scene.monitor()
    monitor.poll()
    m = scrape(monitor)
    assert m["wsgiwatch_hol_blocked_requests_total"] == []
    assert m.get("wsgiwatch_queue_wait_seconds_count", []) == []
    assert value(m, "wsgiwatch_queue_wait_source_total", source="none") == 2


def test_kept_alive_request_with_its_own_arrival_uses_it(scene: Scene) -> None:
    w = scene.worker(W1)
    finish(w, Req(scene.at(0), scene.at(1000), "/slow", peer_port=1))
    finish(
        w,
        Req(
            scene.at(1000),
            scene.at(1005),
            "/keepalive",
            peer_port=2,
            source=HOOK,
            accept_ns=scene.at(-5000),
            arrival_ns=scene.at(400),
            flags=fmt.FLAG_REUSED_CONNECTION,
        ),
    )
    monitor = scene.monitor()
    monitor.poll()
    (incident,) = monitor.incidents()
    assert incident["victim"]["queue_wait_s"] == pytest.approx(0.6)
    assert incident["victim"]["wait_source"] == "hook"


def test_proxy_header_only_gives_source_header(scene: Scene) -> None:
    w = scene.worker(W1)
    finish(w, Req(scene.at(0), scene.at(1000), "/slow", peer_port=1))
    offset = time.time_ns() - time.monotonic_ns()
    finish(
        w,
        Req(
            scene.at(1000),
            scene.at(1005),
            "/behind-proxy",
            peer_port=2,
            proxy_wall_ns=scene.at(300) + offset,
        ),
    )
    monitor = scene.monitor()
    monitor.poll()
    m = scrape(monitor)
    assert value(m, "wsgiwatch_queue_wait_source_total", source="header") == 1
    assert value(m, "wsgiwatch_queue_wait_seconds_sum", route="/behind-proxy") == pytest.approx(
        0.7, abs=0.01
    )
    # The proxy's time also covers the proxy and the kernel backlog, where waiting is
    # healthy: it sizes the wait but does not make a head-of-line verdict on its own.
    assert monitor.incidents() == []
    assert not m.get("wsgiwatch_hol_blocked_requests_total")


def test_a_proxy_header_alone_does_not_feed_the_process_phase(scene: Scene) -> None:
    """``wsgiwatch_wait_seconds{phase="process"}`` is accept-or-arrival to entry, inside the
    worker. With only a proxy's timestamp the wait since it spans proxy, kernel backlog and
    process, and cannot be split: putting all of it under "process" shows healthy backlog
    queueing (gunicorn sync behind nginx under load) as waiting inside a worker."""
    w = scene.worker(W1)
    offset = time.time_ns() - time.monotonic_ns()
    finish(
        w,
        Req(scene.at(300), scene.at(305), "/behind-proxy", proxy_wall_ns=scene.at(0) + offset),
    )
    monitor = scene.monitor()
    monitor.poll()
    m = scrape(monitor)
    assert value(m, "wsgiwatch_queue_wait_source_total", source="header") == 1
    assert [s for s in m.get("wsgiwatch_wait_seconds_count", []) if s.value] == []


def test_proxy_phase_is_measured_when_the_hook_gives_the_accept(scene: Scene) -> None:
    w = scene.worker(W1)
    offset = time.time_ns() - time.monotonic_ns()
    finish(
        w,
        Req(
            scene.at(100),
            scene.at(105),
            peer_port=2,
            source=HOOK,
            accept_ns=scene.at(60),
            arrival_ns=scene.at(40),
            flags=fmt.FLAG_ARRIVAL_TCP_INFO,
            proxy_wall_ns=scene.at(0) + offset,
        ),
    )
    monitor = scene.monitor()
    monitor.poll()
    m = scrape(monitor)
    assert value(m, "wsgiwatch_wait_seconds_sum", phase="process") == pytest.approx(0.04)
    assert value(m, "wsgiwatch_wait_seconds_sum", phase="backlog") == pytest.approx(0.02)
    assert value(m, "wsgiwatch_wait_seconds_sum", phase="proxy") == pytest.approx(0.04, abs=0.01)


def test_mod_wsgi_request_start_is_a_source(scene: Scene) -> None:
    w = scene.worker(W1)
    finish(w, Req(scene.at(0), scene.at(1000), "/slow", peer_port=1))
    finish(
        w,
        Req(
            scene.at(1000),
            scene.at(1005),
            peer_port=2,
            source=fmt.SOURCE_MOD_WSGI,
            accept_ns=scene.at(200),
        ),
    )
    monitor = scene.monitor()
    monitor.poll()
    m = scrape(monitor)
    assert value(m, "wsgiwatch_queue_wait_source_total", source="mod_wsgi") == 1
    (incident,) = monitor.incidents()
    assert incident["victim"]["wait_source"] == "mod_wsgi"
    assert incident["victim"]["queue_wait_s"] == pytest.approx(0.8)


def test_without_the_hook_new_peers_count_as_accepted_connections(scene: Scene) -> None:
    w = scene.worker(W1)
    finish(w, Req(scene.at(0), scene.at(1), peer_port=1))
    finish(w, Req(scene.at(2), scene.at(3), peer_port=1, flags=fmt.FLAG_REUSED_CONNECTION))
    finish(w, Req(scene.at(4), scene.at(5), peer_port=2))
    monitor = scene.monitor()
    monitor.poll()
    assert value(scrape(monitor), "wsgiwatch_worker_accepted_total", worker="0") == 2


# --- requests, labels -----------------------------------------------------------------------
def test_requests_total_by_route_and_status_class(scene: Scene) -> None:
    w = scene.worker(W1)
    for n, status in enumerate((200, 201, 404, 503, 0, 302)):
        finish(w, Req(scene.at(n), scene.at(n + 0.5), "/r", status=status, peer_port=n + 1))
    monitor = scene.monitor()
    monitor.poll()
    m = scrape(monitor)
    counts = {
        s.labels["status_class"]: s.value
        for s in m["wsgiwatch_requests_total"]
        if s.labels["route"] == "/r"
    }
    assert counts == {"2xx": 2, "3xx": 1, "4xx": 1, "5xx": 1, "unknown": 1}


def test_route_labels_are_capped_with_an_other_bucket(scene: Scene) -> None:
    w = scene.worker(W1, ring=256)
    for n in range(105):
        finish(w, Req(scene.at(n), scene.at(n + 0.5), f"/route{n}", peer_port=n + 1))
    monitor = scene.monitor()
    monitor.poll()
    m = scrape(monitor)
    routes = {s.labels["route"]: s.value for s in m["wsgiwatch_requests_total"]}
    # Three quarters of the 100 labels go on first sight; the last quarter is kept for
    # routes that prove traffic (accumulate.LabelCap), so a scanner cannot take them all.
    assert len(routes) == 76
    assert routes["other"] == 30
    assert "/route74" in routes and "/route75" not in routes
    histogram_routes = {s.labels["route"] for s in m["wsgiwatch_request_duration_seconds_count"]}
    assert len(histogram_routes) == 76


def test_blocker_route_labels_are_capped(scene: Scene) -> None:
    scene.t -= 5 * S  # 10.4 s of requests, all over before the poll (later ones wait a poll)
    w = scene.worker(W1, ring=512)
    t = 0.0
    for n in range(102):
        finish(w, Req(scene.at(t), scene.at(t + 100), f"/slow{n}", peer_port=1))
        finish(
            w,
            Req(
                scene.at(t + 100),
                scene.at(t + 101),
                peer_port=2,
                source=HOOK,
                accept_ns=scene.at(t + 10),
            ),
        )
        t += 102
    monitor = scene.monitor()
    monitor.poll()
    m = scrape(monitor)
    blocked = {
        s.labels["blocker_route"]: s.value for s in m["wsgiwatch_hol_blocked_requests_total"]
    }
    # The blame labels are the route labels (every route gets its blame series at 0 up
    # front): /slow0, the victims' /fast, then /slow1../slow73 take the 75 labels given on
    # first sight (the last quarter waits for routes that prove traffic: accumulate.LabelCap);
    # the other 28 slow routes, each blocking once, go to "other". ``scrape`` leaves out the
    # zero-valued /fast.
    assert len(blocked) == 75
    assert blocked["other"] == 28


# --- incidents ------------------------------------------------------------------------------
def test_incidents_newest_first_with_victim_and_blockers_and_a_log_event(scene: Scene) -> None:
    w = scene.worker(W1)
    scene.worker(W2)
    fast = slow_then_fast(scene, w, fast=2)
    monitor = scene.monitor()
    with structlog.testing.capture_logs() as logs:
        monitor.poll()
    incidents = monitor.incidents()
    assert [i["victim"]["peer"] for i in incidents] == ["127.0.0.1:2001", "127.0.0.1:2000"]
    newest = incidents[0]
    victim = newest["victim"]
    assert victim["method"] == "GET"
    assert victim["route"] == "/fast"
    assert victim["worker"] == 0
    assert victim["pid"] == W1
    assert victim["queue_wait_s"] == pytest.approx((fast[1].entry_ns - fast[1].accept_ns) / 1e9)
    assert victim["wait_source"] == "hook"
    assert victim["status"] == 200
    main = newest["blockers"][0]
    assert main["route"] == "/slow"
    assert main["method"] == "GET"
    assert main["duration_s"] == pytest.approx(1.0)
    assert main["running"] is False
    assert main["started_s_before_victim"] == pytest.approx(1.01)
    assert sum(b["blamed_s"] for b in newest["blockers"]) == pytest.approx(victim["queue_wait_s"])
    assert newest["misrouted"] is True
    assert monitor.incidents(limit=1) == incidents[:1]
    assert monitor.incidents(limit=0) == []

    events = [e for e in logs if e["event"] == "hol.incident"]
    assert len(events) == 2
    assert all(e["log_level"] == "warning" for e in events)
    # Logged oldest first, as they were found.
    assert events[-1]["victim"] == victim
    assert events[-1]["blockers"] == newest["blockers"]


# --- the metrics contract -------------------------------------------------------------------
CONTRACT = {
    "wsgiwatch_requests_total": {"route", "status_class"},
    "wsgiwatch_request_duration_seconds_bucket": {"route", "le"},
    "wsgiwatch_request_duration_seconds_count": {"route"},
    "wsgiwatch_request_duration_seconds_sum": {"route"},
    "wsgiwatch_queue_wait_seconds_bucket": {"route", "le"},
    "wsgiwatch_queue_wait_seconds_count": {"route"},
    "wsgiwatch_queue_wait_seconds_sum": {"route"},
    "wsgiwatch_hol_blocked_requests_total": {"blocker_route"},
    "wsgiwatch_hol_blocked_seconds_total": {"blocker_route"},
    "wsgiwatch_misrouted_requests_total": set(),
    "wsgiwatch_wait_seconds_bucket": {"phase", "le"},
    "wsgiwatch_wait_seconds_count": {"phase"},
    "wsgiwatch_wait_seconds_sum": {"phase"},
    "wsgiwatch_stalled_requests": {"worker"},
    "wsgiwatch_oldest_stall_seconds": set(),
    "wsgiwatch_worker_busy": {"worker"},
    "wsgiwatch_worker_capacity": {"worker"},
    "wsgiwatch_worker_busy_seconds_total": {"worker"},
    "wsgiwatch_worker_accepted_total": {"worker"},
    "wsgiwatch_worker_resident_memory_bytes": {"worker"},
    "wsgiwatch_worker_cpu_seconds_total": {"worker"},
    "wsgiwatch_listen_backlog": {"listener"},
    "wsgiwatch_listen_backlog_limit": {"listener"},
    "wsgiwatch_spool_records_dropped_total": set(),
    "wsgiwatch_sidecar_poll_duration_seconds_bucket": {"le"},
    "wsgiwatch_sidecar_poll_duration_seconds_count": set(),
    "wsgiwatch_sidecar_poll_duration_seconds_sum": set(),
}
FORBIDDEN_LABELS = {"pid", "thread", "tid", "path", "peer", "ppid"}


def fake_usage(proc: FakeProc, pid: int, *, cpu_ticks: tuple[int, int], pages: int) -> None:
    """Give a fake process CPU time (utime, stime: /proc/PID/stat fields 14 and 15) and
    resident memory (the second field of /proc/PID/statm, in pages)."""
    fields = ["S", str(FAKE_PPID)] + ["0"] * 17 + ["1000"] + ["0"] * 20  # fields 3 to 42
    fields[14 - 3], fields[15 - 3] = map(str, cpu_ticks)
    with open(os.path.join(proc.root, str(pid), "stat"), "w", encoding="ascii") as f:
        f.write(f"{pid} (gunicorn: worker) {' '.join(fields)}\n")
    with open(os.path.join(proc.root, str(pid), "statm"), "w", encoding="ascii") as f:
        f.write(f"9000 {pages} 300 10 0 700 0\n")


def test_every_contract_metric_is_exposed_with_its_labels(scene: Scene) -> None:
    # One worker is this very process, with CPU time and memory in the fake procfs.
    me = scene.worker(os.getpid(), accept_hook=True)
    fake_usage(scene.proc, os.getpid(), cpu_ticks=(250, 50), pages=1234)
    w = scene.worker(W1, accept_hook=True)
    scene.worker(W2)
    slow_then_fast(scene, w, fast=2)
    offset = time.time_ns() - time.monotonic_ns()
    finish(
        me,
        Req(
            scene.at(50),
            scene.at(60),
            peer_port=5,
            source=HOOK,
            accept_ns=scene.at(20),
            arrival_ns=scene.at(10),
            proxy_wall_ns=scene.at(0) + offset,
        ),
    )
    start(me, 0, Req(time.monotonic_ns() - S, 0, "/running", peer_port=6))
    accept(me, time.monotonic_ns() - 500 * MS, "127.0.0.1", 7)

    kernel = FakeKernel()
    kernel.inodes = {os.getpid(): {500, 502}, W1: {500}}
    kernel.socks = [
        tcp(state="LISTEN", port=8000, peer="0.0.0.0", peer_port=0, inode=500, rqueue=2),
        # The connection accepted at port 7: its request unread, half a second old.
        tcp(peer_port=7, inode=502, rqueue=80, recv_ms=500, sent_ms=600),
        tcp(state="LISTEN", local="::", port=8000, peer="::", peer_port=0, inode=501),
    ]
    monitor = scene.monitor(use_kernel=True, kernel=kernel)
    monitor.poll()
    m = scrape(monitor)

    for name, labels in CONTRACT.items():
        assert m.get(name), f"{name} missing or without samples"
        for sample in m[name]:
            assert set(sample.labels) == labels, (name, sample.labels)
    for name, samples in m.items():
        for sample in samples:
            assert not FORBIDDEN_LABELS & set(sample.labels), (name, sample.labels)
    # Worker indexes follow the spools' names, so which index this process got depends on
    # its pid: look it up rather than assume it.
    mine = str(next(w["worker"] for w in monitor.state()["workers"] if w["pid"] == os.getpid()))
    assert value(m, "wsgiwatch_stalled_requests", worker=mine) == 1
    assert value(m, "wsgiwatch_oldest_stall_seconds") >= 0.5
    page, ticks = os.sysconf("SC_PAGE_SIZE"), os.sysconf("SC_CLK_TCK")
    assert value(m, "wsgiwatch_worker_resident_memory_bytes", worker=mine) == 1234 * page
    assert value(m, "wsgiwatch_worker_cpu_seconds_total", worker=mine) == 300 / ticks
    assert value(m, "wsgiwatch_listen_backlog", listener="127.0.0.1:8000") == 2
    assert {s.labels["listener"] for s in m["wsgiwatch_listen_backlog_limit"]} == {
        "127.0.0.1:8000"
    }  # [::]:8000 is held by no worker and was not asked for
    assert value(m, "wsgiwatch_sidecar_poll_duration_seconds_count") == 1
    worker_labels = {s.labels["worker"] for s in m["wsgiwatch_worker_busy"]}
    assert worker_labels == {"0", "1", "2"}


def test_metrics_of_an_empty_directory_are_still_well_formed(scene: Scene) -> None:
    monitor = scene.monitor()
    monitor.poll()
    m = scrape(monitor)
    assert value(m, "wsgiwatch_misrouted_requests_total") == 0
    assert value(m, "wsgiwatch_oldest_stall_seconds") == 0
    assert value(m, "wsgiwatch_spool_records_dropped_total") == 0
    assert value(m, "wsgiwatch_workers") == 0


def test_health(scene: Scene) -> None:
    scene.worker(W1)
    monitor = scene.monitor(poll_interval_s=0.25)
    before = monitor.health()
    assert before["polls"] == 0 and before["last_poll_age_s"] is None
    monitor.poll()
    monitor.poll()
    health = monitor.health()
    assert health["polls"] == 2
    assert health["workers"] == 1
    assert health["kernel"] is False
    assert health["kernel_notices"] == []
    assert health["spool_dir"] == scene.dir
    assert health["poll_interval_s"] == 0.25
    assert 0 <= health["last_poll_age_s"] < 5
    assert 0 < health["last_poll_duration_s"] < 5


# --- losses, retirement ---------------------------------------------------------------------
def test_records_dropped_when_the_ring_laps_are_counted(scene: Scene) -> None:
    w = scene.worker(W1, ring=8)
    monitor = scene.monitor()
    monitor.poll()
    for n in range(11):
        finish(w, Req(scene.at(n), scene.at(n + 0.5), peer_port=n + 1))
    monitor.poll()
    m = scrape(monitor)
    assert value(m, "wsgiwatch_spool_records_dropped_total") == 3
    assert value(m, "wsgiwatch_requests_total", route="/fast", status_class="2xx") == 8
    # Requests that never made it to the ring count too.
    w.bump(fmt.OFF_SLOTS_EXHAUSTED)
    w.bump(fmt.OFF_WRITE_ERRORS)
    monitor.poll()
    assert value(scrape(monitor), "wsgiwatch_spool_records_dropped_total") == 5


def test_a_restarted_sidecar_resumes_at_its_cursor(scene: Scene) -> None:
    w = scene.worker(W1, ring=8)
    for n in range(3):
        finish(w, Req(scene.at(n), scene.at(n + 0.5), peer_port=n + 1))
    first = scene.monitor()
    first.poll()
    first.close()
    for n in range(3, 6):
        finish(w, Req(scene.at(n), scene.at(n + 0.5), peer_port=n + 1))
    second = scene.monitor()
    second.poll()
    m = scrape(second)
    assert value(m, "wsgiwatch_requests_total", route="/fast", status_class="2xx") == 3
    assert value(m, "wsgiwatch_spool_records_dropped_total") == 0


def test_records_overwritten_while_the_sidecar_was_away_are_counted(scene: Scene) -> None:
    """The reader saves its cursor in the spool header "so a restarted sidecar resumes"; when
    the ring lapped that cursor meanwhile, the records in between were lost, and
    ``wsgiwatch_spool_records_dropped_total`` must say so."""
    w = scene.worker(W1, ring=8)
    for n in range(3):
        finish(w, Req(scene.at(n), scene.at(n + 0.5), peer_port=n + 1))
    first = scene.monitor()
    first.poll()  # cursor 3 saved in the header
    first.close()
    for n in range(3, 23):  # head 23: the ring holds 15..22; 3..14 were overwritten
        finish(w, Req(scene.at(n), scene.at(n + 0.5), peer_port=n + 1))
    second = scene.monitor()
    second.poll()
    m = scrape(second)
    assert value(m, "wsgiwatch_requests_total", route="/fast", status_class="2xx") == 8
    assert value(m, "wsgiwatch_spool_records_dropped_total") == 12


def test_a_dead_workers_spool_is_drained_then_removed(scene: Scene) -> None:
    w = scene.worker(W1)
    monitor = scene.monitor()
    monitor.poll()
    finish(w, Req(scene.at(0), scene.at(1), "/last-words", peer_port=1))
    scene.proc.kill(W1)
    monitor.poll()
    m = scrape(monitor)
    assert value(m, "wsgiwatch_requests_total", route="/last-words", status_class="2xx") == 1
    assert not os.path.exists(w.path)
    assert monitor.health()["workers"] == 0
    assert m["wsgiwatch_worker_busy"] == []
    # Its counters stay under its index (monotonic); a replacement takes that index.
    assert value(m, "wsgiwatch_worker_busy_seconds_total", worker="0") == pytest.approx(0.001)
    scene.worker(W2)
    monitor.poll()
    assert [s.labels for s in scrape(monitor)["wsgiwatch_worker_busy"]] == [{"worker": "0"}]


def test_dropped_records_counter_does_not_go_down_when_a_worker_is_retired(scene: Scene) -> None:
    """``wsgiwatch_spool_records_dropped_total`` is a counter: retiring a dead worker must not
    take its not-written records (all slots busy, internal errors) out of the total."""
    w = scene.worker(W1)
    monitor = scene.monitor()
    w.bump(fmt.OFF_SLOTS_EXHAUSTED)
    w.bump(fmt.OFF_SLOTS_EXHAUSTED)
    w.bump(fmt.OFF_WRITE_ERRORS)
    monitor.poll()
    assert value(scrape(monitor), "wsgiwatch_spool_records_dropped_total") == 3
    scene.proc.kill(W1)
    monitor.poll()  # drained and retired
    assert monitor.registry.workers == {}
    assert value(scrape(monitor), "wsgiwatch_spool_records_dropped_total") == 3


# --- live stalls ----------------------------------------------------------------------------
def test_accepted_connections_behind_a_busy_worker_are_live_stalls(scene: Scene) -> None:
    w = scene.worker(W1, accept_hook=True)
    now = time.monotonic_ns()
    start(w, 0, Req(now - 2 * S, 0, "/slow", peer_port=1))
    accept(w, now - 800 * MS, "127.0.0.1", 2)
    accept(w, now - 300 * MS, "::ffff:127.0.0.1", 3)
    monitor = scene.monitor()
    monitor.poll()
    m = scrape(monitor)
    assert value(m, "wsgiwatch_stalled_requests", worker="0") == 2
    assert value(m, "wsgiwatch_oldest_stall_seconds") >= 0.8
    assert value(m, "wsgiwatch_worker_busy", worker="0") == 1
    assert value(m, "wsgiwatch_worker_capacity", worker="0") == 1
    assert value(m, "wsgiwatch_worker_accepted_total", worker="0") == 2

    # The slow request ends; the first stalled one starts: only one left, and it is younger.
    w.release_slot(0)
    finish(w, Req(now - 2 * S, time.monotonic_ns(), "/slow", peer_port=1))
    start(w, 0, Req(time.monotonic_ns(), 0, "/fast", peer_port=2))
    monitor.poll()
    m = scrape(monitor)
    assert value(m, "wsgiwatch_stalled_requests", worker="0") == 1
    assert 0.3 <= value(m, "wsgiwatch_oldest_stall_seconds") < 0.8

    # Both done: no stall.
    w.release_slot(0)
    finish(w, Req(now, time.monotonic_ns(), peer_port=2, source=HOOK, accept_ns=now - 800 * MS))
    finish(w, Req(now, time.monotonic_ns(), peer_port=3, source=HOOK, accept_ns=now - 300 * MS))
    monitor.poll()
    m = scrape(monitor)
    assert value(m, "wsgiwatch_stalled_requests", worker="0") == 0
    assert value(m, "wsgiwatch_oldest_stall_seconds") == 0


def test_accepted_connections_with_a_free_slot_are_not_stalls(scene: Scene) -> None:
    w = scene.worker(W1, capacity=2, accept_hook=True)
    now = time.monotonic_ns()
    start(w, 0, Req(now - 2 * S, 0, "/slow", peer_port=1))
    accept(w, now - 800 * MS, "127.0.0.1", 2)
    monitor = scene.monitor()
    monitor.poll()
    m = scrape(monitor)
    assert value(m, "wsgiwatch_stalled_requests", worker="0") == 0
    assert value(m, "wsgiwatch_oldest_stall_seconds") == 0


def test_the_connection_being_served_is_not_its_own_stall(scene: Scene) -> None:
    """The accept event of the request now running is read in the same poll as its slot: it
    must not be reported as a request stalled behind itself."""
    w = scene.worker(W1, accept_hook=True)
    now = time.monotonic_ns()
    accept(w, now - 2 * S - MS, "127.0.0.1", 1)
    start(w, 0, Req(now - 2 * S, 0, "/slow", peer_port=1))
    accept(w, now - 300 * MS, "127.0.0.1", 2)
    monitor = scene.monitor()
    monitor.poll()
    m = scrape(monitor)
    assert value(m, "wsgiwatch_stalled_requests", worker="0") == 1
    assert value(m, "wsgiwatch_oldest_stall_seconds") < 1


# --- with a (fake) kernel -------------------------------------------------------------------
def kernel_scene(scene: Scene) -> tuple[SpoolWriter, FakeKernel]:
    w = scene.worker(W1)
    kernel = FakeKernel()
    kernel.inodes = {W1: {500, 11}}
    return w, kernel


LISTENER = tcp(state="LISTEN", port=8000, peer="0.0.0.0", peer_port=0, inode=500, wqueue=128)


def test_kernel_arrival_gives_the_queue_wait_and_a_live_stall(scene: Scene) -> None:
    w, kernel = kernel_scene(scene)
    start(w, 0, Req(scene.at(0), 0, "/slow", peer_port=1))
    # At T+300 ms the kernel shows the fast request's bytes unread for 200 ms.
    kernel.mid_ns = scene.at(300)
    kernel.socks = [
        LISTENER,
        tcp(peer="::ffff:127.0.0.1", peer_port=7, inode=11, rqueue=90, recv_ms=200),
        tcp(peer_port=8, inode=0),  # still in the backlog: healthy queueing
    ]
    monitor = scene.monitor(use_kernel=True, kernel=kernel)
    monitor.poll()
    m = scrape(monitor)
    assert value(m, "wsgiwatch_stalled_requests", worker="0") == 1
    assert value(m, "wsgiwatch_oldest_stall_seconds") > 9
    assert value(m, "wsgiwatch_listen_backlog_limit", listener="127.0.0.1:8000") == 128
    assert monitor.backlog_connections == 1

    w.release_slot(0)
    finish(w, Req(scene.at(0), scene.at(1000), "/slow", peer_port=1))
    finish(w, Req(scene.at(1000), scene.at(1005), "/fast", peer_port=7))
    kernel.socks = [LISTENER]
    monitor.poll()
    m = scrape(monitor)
    assert value(m, "wsgiwatch_queue_wait_source_total", source="kernel") == 1
    assert value(m, "wsgiwatch_hol_blocked_requests_total", blocker_route="/slow") == 1
    (incident,) = monitor.incidents()
    assert incident["victim"]["queue_wait_s"] == pytest.approx(0.9)
    assert incident["victim"]["wait_source"] == "kernel"
    assert value(m, "wsgiwatch_stalled_requests", worker="0") == 0


def test_kernel_waiting_in_a_worker_with_a_free_slot_is_not_a_stall(scene: Scene) -> None:
    w = scene.worker(W1, capacity=2)
    kernel = FakeKernel()
    kernel.inodes = {W1: {500, 11}}
    start(w, 0, Req(scene.at(0), 0, "/slow", peer_port=1))
    kernel.socks = [LISTENER, tcp(peer_port=7, inode=11, rqueue=90, recv_ms=200)]
    monitor = scene.monitor(use_kernel=True, kernel=kernel)
    monitor.poll()
    m = scrape(monitor)
    assert value(m, "wsgiwatch_stalled_requests", worker="0") == 0
    assert value(m, "wsgiwatch_oldest_stall_seconds") == 0


def test_a_kernel_arrival_after_the_entry_belongs_to_a_later_request(scene: Scene) -> None:
    w, kernel = kernel_scene(scene)
    kernel.mid_ns = scene.at(2000)
    kernel.socks = [LISTENER, tcp(peer_port=7, inode=11, rqueue=90, recv_ms=100)]
    start(w, 0, Req(scene.at(1500), 0, "/slow", peer_port=1))
    monitor = scene.monitor(use_kernel=True, kernel=kernel)
    monitor.poll()
    # A request on that connection that entered before the arrival seen is not its owner.
    finish(w, Req(scene.at(1000), scene.at(1005), "/earlier", peer_port=7))
    kernel.socks = [LISTENER]
    monitor.poll()
    assert value(scrape(monitor), "wsgiwatch_queue_wait_source_total", source="none") == 1


def test_kept_alive_arrival_seen_by_the_kernel_survives_the_previous_request(
    scene: Scene,
) -> None:
    """Keep-alive: request 1 on a connection ends, request 2 arrives on it and waits behind a
    slow request; one poll sees both (request 1's record, request 2 waiting). Request 1 must
    not use up request 2's kernel arrival (it is after request 1's entry: not request 1's), or
    request 2 has no queue wait and the blocking goes unseen."""
    w, kernel = kernel_scene(scene)
    finish(w, Req(scene.at(500), scene.at(900), "/first", peer_port=7))  # request 1
    start(w, 0, Req(scene.at(1000), 0, "/slow", peer_port=1))
    kernel.mid_ns = scene.at(1300)
    kernel.socks = [LISTENER, tcp(peer_port=7, inode=11, rqueue=90, recv_ms=200)]  # at T+1100
    monitor = scene.monitor(use_kernel=True, kernel=kernel)
    monitor.poll()

    w.release_slot(0)
    finish(w, Req(scene.at(1000), scene.at(2000), "/slow", peer_port=1))
    finish(
        w,
        Req(
            scene.at(2000), scene.at(2005), "/second", peer_port=7, flags=fmt.FLAG_REUSED_CONNECTION
        ),
    )
    kernel.socks = [LISTENER]
    monitor.poll()
    m = scrape(monitor)
    assert value(m, "wsgiwatch_queue_wait_source_total", source="kernel") == 1
    assert value(m, "wsgiwatch_hol_blocked_requests_total", blocker_route="/slow") == 1


def test_blame_series_start_at_zero_for_every_route_seen(scene: Scene) -> None:
    """A counter series born at 1 is invisible to rate() and increase(): each route's blame
    series is exported at 0 from its first request, before it ever blocks anyone."""
    from prometheus_client import CollectorRegistry, generate_latest

    w = scene.worker(W1)
    finish(w, Req(scene.at(0), scene.at(10), "/quiet", peer_port=1))
    monitor = scene.monitor()
    monitor.poll()
    registry = CollectorRegistry()
    registry.register(monitor)  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    assert 'wsgiwatch_hol_blocked_requests_total{blocker_route="/quiet"} 0.0' in text
    assert 'wsgiwatch_hol_blocked_seconds_total{blocker_route="/quiet"} 0.0' in text


def test_an_accepted_connection_the_kernel_no_longer_has_is_no_stall(scene: Scene) -> None:
    """A TCP health check connects and closes without a request: its accept event must not
    count as a stall while the worker is busy (with the kernel's view, stalls are what the
    kernel shows waiting)."""
    w = scene.worker(W1, accept_hook=True)
    start(w, 0, Req(time.monotonic_ns() - S, 0, "/running", peer_port=6))
    accept(w, time.monotonic_ns() - 500 * MS, "127.0.0.1", 9)
    kernel = FakeKernel()
    kernel.inodes = {W1: {500}}
    kernel.socks = [tcp(state="LISTEN", port=8000, peer="0.0.0.0", peer_port=0, inode=500)]
    monitor = scene.monitor(use_kernel=True, kernel=kernel)
    monitor.poll()
    m = scrape(monitor)
    assert value(m, "wsgiwatch_stalled_requests", worker="0") == 0
    assert value(m, "wsgiwatch_oldest_stall_seconds") == 0


def test_a_victim_ending_after_the_scoreboard_read_waits_a_poll_for_its_blocker(
    scene: Scene,
) -> None:
    """A request that ended after the poll's scoreboard read may have waited behind one that
    began after that read and still runs: in neither the scoreboard nor the records. It is
    judged at the next poll, once its blocker is known."""
    w = scene.worker(W1)
    monitor = scene.monitor()
    monitor.poll()
    ahead_ms = (time.monotonic_ns() - scene.t) / MS + 400  # ends after the next poll starts
    finish(
        w,
        Req(
            scene.at(ahead_ms),
            scene.at(ahead_ms + 2),
            "/fast",
            peer_port=2,
            source=HOOK,
            accept_ns=scene.at(ahead_ms - 300),
        ),
    )
    monitor.poll()
    assert monitor.recent_requests(600)["requests"] == []  # read, not judged yet
    finish(w, Req(scene.at(ahead_ms - 350), scene.at(ahead_ms), "/slow", peer_port=1))
    time.sleep(0.45)  # now both have ended before the next poll's scoreboard read
    monitor.poll()
    judged = {r["route"]: r for r in monitor.recent_requests(600)["requests"]}
    assert set(judged) == {"/fast", "/slow"}
    assert judged["/fast"]["blocked"]
    assert judged["/fast"]["blockers"][0]["route"] == "/slow"
