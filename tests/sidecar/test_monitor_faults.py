"""The monitor when things go wrong around it, on crafted spools and a fake procfs: workers
that die with requests in flight, a spool directory removed and back, a server that never
calls close(). Each outcome is counted, visible in /healthz or a gauge, and logged once."""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs
from support.sidecar_support import (
    FAKE_PID_BASE,
    FakeKernel,
    FakeProc,
    Req,
    S,
    finish,
    make_spool,
    scrape,
    start,
    tcp,
    value,
)

from wsgiwatch.errors import SpoolFormatError
from wsgiwatch.sidecar.monitor import Monitor
from wsgiwatch.sidecar.poll_loop import PollLoop
from wsgiwatch.spool import fate
from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.writer import SpoolWriter

W1, W2 = FAKE_PID_BASE + 21, FAKE_PID_BASE + 22


class Scene:
    def __init__(self, spool_dir: str) -> None:
        self.dir = spool_dir
        self.proc = FakeProc()
        self.now = time.monotonic_ns()
        self.monitors: list[Monitor] = []

    def worker(self, pid: int, capacity: int = 2) -> SpoolWriter:
        self.proc.add(pid, 1000)
        return make_spool(self.dir, pid, start_ticks=1000, capacity=capacity, slot_count=4)

    def monitor(self, **kw: object) -> Monitor:
        kw.setdefault("use_kernel", False)
        monitor = Monitor(self.dir, procfs_root=self.proc.root, **kw)  # type: ignore[arg-type]
        self.monitors.append(monitor)
        return monitor

    def close(self) -> None:
        for monitor in self.monitors:
            monitor.close()
        self.proc.cleanup()


@pytest.fixture
def scene(spool_dir: str) -> Iterator[Scene]:
    s = Scene(spool_dir)
    yield s
    s.close()


def events(logs: list[dict[str, object]], name: str) -> list[dict[str, object]]:
    return [e for e in logs if e["event"] == name]


# --- requests that die with their worker ----------------------------------------------------
def test_requests_running_when_a_worker_is_killed_are_counted_by_route(scene: Scene) -> None:
    w = scene.worker(W1)
    finish(w, Req(scene.now - 3 * S, scene.now - 2 * S, "/done"))
    start(w, 0, Req(scene.now - 2 * S, route="/report"))
    start(w, 1, Req(scene.now - 1 * S, route="/export", method="POST"))
    monitor = scene.monitor()
    monitor.poll()
    scene.proc.kill(W1)  # SIGKILL: no note left
    with capture_logs() as logs:
        monitor.poll()
    m = scrape(monitor)
    assert value(m, "wsgiwatch_lost_requests_total", route="/report", fate="killed") == 1
    assert value(m, "wsgiwatch_lost_requests_total", route="/export", fate="killed") == 1
    assert value(m, "wsgiwatch_worker_deaths_total", fate="killed") == 1
    assert value(m, "wsgiwatch_worker_deaths_total", fate="timed_out") == 0
    assert value(m, "wsgiwatch_requests_total", route="/done", status_class="2xx") == 1
    (event,) = events(logs, "worker.lost")
    assert event["fate"] == "killed" and event["pid"] == W1
    lost = {(r["method"], r["route"]) for r in event["requests"]}  # type: ignore[attr-defined]
    assert lost == {("GET", "/report"), ("POST", "/export")}
    assert os.listdir(scene.dir) == []  # drained, then removed


def test_a_request_that_finished_as_its_worker_died_is_not_lost(scene: Scene) -> None:
    """The record is written before the slot is freed: a worker killed in between shows the
    request both finished and on its scoreboard. It was answered: not lost."""
    w = scene.worker(W1)
    req = start(w, 0, Req(scene.now - 2 * S, route="/answered"))
    finish(w, Req(req.entry_ns, scene.now - S, "/answered", request=req.request))
    monitor = scene.monitor()
    scene.proc.kill(W1)
    with capture_logs() as logs:
        monitor.poll()
    m = scrape(monitor)
    assert m.get("wsgiwatch_lost_requests_total", []) == []
    assert value(m, "wsgiwatch_worker_deaths_total", fate="killed") == 1
    assert events(logs, "worker.lost") == []


def test_a_timed_out_worker_names_its_fate_and_its_aborted_request(scene: Scene) -> None:
    """gunicorn's abort raises SystemExit inside the request, which the middleware records
    as raised; the worker's note says it timed out and which request was in flight."""
    w = scene.worker(W1, capacity=1)
    req = start(w, 0, Req(scene.now - 5 * S, route="/slow"))
    finish(
        w,
        Req(
            req.entry_ns,
            scene.now - S,
            "/slow",
            status=500,
            flags=fmt.FLAG_APP_RAISED,
            request=req.request,
        ),
    )
    fate.write_note(w.path, fate.TIMED_OUT, [req.request])
    fate.write_note(w.path, fate.EXITED)  # it exits after the abort: the first word stands
    monitor = scene.monitor()
    scene.proc.kill(W1)
    with capture_logs() as logs:
        monitor.poll()
    m = scrape(monitor)
    assert value(m, "wsgiwatch_lost_requests_total", route="/slow", fate="timed_out") == 1
    assert value(m, "wsgiwatch_worker_deaths_total", fate="timed_out") == 1
    (event,) = events(logs, "worker.lost")
    assert event["fate"] == "timed_out"
    assert os.listdir(scene.dir) == []  # the spool and its note


def test_a_worker_that_exited_with_a_request_running_names_that_fate(scene: Scene) -> None:
    w = scene.worker(W1)
    req = start(w, 0, Req(scene.now - S, route="/abandoned"))
    fate.write_note(w.path, fate.EXITED, [req.request])  # gunicorn's worker_exit hook
    monitor = scene.monitor()
    scene.proc.kill(W1)
    monitor.poll()
    m = scrape(monitor)
    assert value(m, "wsgiwatch_lost_requests_total", route="/abandoned", fate="exited") == 1
    assert value(m, "wsgiwatch_worker_deaths_total", fate="exited") == 1
    assert value(m, "wsgiwatch_worker_deaths_total", fate="killed") == 0


@pytest.mark.parametrize(
    "note", [b"", b"{", b'{"fate": "eaten", "requests": []}', b'{"fate": "exited"}', b"x" * 9000]
)
def test_a_note_that_is_not_ours_leaves_the_fate_unknown(scene: Scene, note: bytes) -> None:
    w = scene.worker(W1)
    start(w, 0, Req(scene.now - S, route="/x"))
    with open(fate.note_path(w.path), "wb") as f:
        f.write(note)
    monitor = scene.monitor()
    scene.proc.kill(W1)
    monitor.poll()
    assert value(scrape(monitor), "wsgiwatch_lost_requests_total", route="/x", fate="killed") == 1
    assert os.listdir(scene.dir) == []


def test_connections_accepted_and_not_started_die_with_their_worker(scene: Scene) -> None:
    w = scene.worker(W1, capacity=1)
    start(w, 0, Req(scene.now - 2 * S, route="/slow", peer_port=7000))
    kernel = FakeKernel()
    kernel.inodes = {W1: {500, 501, 502}}
    kernel.socks = [
        tcp(state="LISTEN", port=8000, peer="0.0.0.0", peer_port=0, inode=500),
        tcp(peer_port=7000, inode=501, recv_ms=2000, sent_ms=2000),  # being served
        tcp(peer_port=7001, inode=502, rqueue=80, recv_ms=500, sent_ms=600),  # waiting
    ]
    monitor = scene.monitor(use_kernel=True, kernel=kernel)
    monitor.poll()
    assert len(monitor.stalls) == 1
    scene.proc.kill(W1)
    kernel.inodes, kernel.socks = {}, kernel.socks[:1]  # the kernel closed them
    with capture_logs() as logs:
        monitor.poll()
    m = scrape(monitor)
    assert value(m, "wsgiwatch_lost_connections_total", fate="killed") == 1
    assert value(m, "wsgiwatch_lost_requests_total", route="/slow", fate="killed") == 1
    (event,) = events(logs, "worker.lost")
    assert event["unstarted_connections"] == 1


def test_a_spool_removed_while_its_worker_lives_loses_no_request(scene: Scene) -> None:
    w = scene.worker(W1)
    start(w, 0, Req(scene.now - S, route="/x"))
    monitor = scene.monitor()
    monitor.poll()
    os.unlink(w.path)
    with capture_logs() as logs:
        monitor.poll()
    m = scrape(monitor)
    assert m.get("wsgiwatch_lost_requests_total", []) == []
    assert value(m, "wsgiwatch_worker_deaths_total", fate="killed") == 0
    assert events(logs, "worker.lost") == []


# --- the spool directory removed, and back ----------------------------------------------------
def test_a_removed_spool_directory_degrades_health_and_recovers(scene: Scene) -> None:
    scene.worker(W1)
    monitor = scene.monitor()
    loop = PollLoop(monitor, 0.5)
    assert loop.poll_once()
    assert loop.status()["status"] == "ok"
    shutil.rmtree(scene.dir)
    with capture_logs() as logs:
        for _ in range(3):
            assert loop.poll_once()  # polls go on
    status = loop.status()
    assert status["status"] == "degraded"
    (reason,) = status["degraded_reasons"]
    assert scene.dir in reason and "No such file" in reason
    assert loop.healthy()  # degraded, not stale: /healthz still answers 200
    assert value(scrape(monitor), "wsgiwatch_spool_directory_present") == 0
    assert value(scrape(monitor), "wsgiwatch_workers") == 0
    assert [e["event"] for e in logs] == ["spool.directory_missing"]  # once, not per poll
    os.mkdir(scene.dir)
    scene.worker(W2)  # a worker writes its spool anew
    with capture_logs() as logs:
        loop.poll_once()
        loop.poll_once()
    assert [e["event"] for e in logs] == ["spool.directory_back"]
    assert loop.status()["status"] == "ok"
    assert value(scrape(monitor), "wsgiwatch_spool_directory_present") == 1
    assert [w.pid for w in monitor.registry.live()] == [W2]


def test_unreadable_spools_are_visible_while_they_last(scene: Scene) -> None:
    scene.proc.add(W1, 1000)
    path = os.path.join(scene.dir, fmt.spool_name(W1, 1000))
    with open(path, "wb") as f:
        f.write(b"\0" * 100)  # short, all zero: not a spool
    monitor = scene.monitor()
    loop = PollLoop(monitor, 0.5)
    loop.poll_once()
    loop.poll_once()
    assert value(scrape(monitor), "wsgiwatch_spool_unreadable_files") == 1
    assert value(scrape(monitor), "wsgiwatch_spool_errors_total") == 1
    # (Run as root, with no worker writing, the directory itself is also reported.)
    assert "1 spool file(s) cannot be read" in loop.status()["degraded_reasons"]
    os.unlink(path)
    loop.poll_once()
    assert value(scrape(monitor), "wsgiwatch_spool_unreadable_files") == 0
    assert not any("cannot be read" in r for r in loop.status()["degraded_reasons"])


# --- a server that never calls close() ----------------------------------------------------------
def test_a_slot_busy_past_the_limit_is_stuck_not_busy(scene: Scene) -> None:
    w = scene.worker(W1, capacity=1)
    # The limit is an hour by default; a machine up for less than that has no monotonic
    # time an hour ago, so the test scales it down.
    start(w, 0, Req(scene.now - 20 * S, route="/never-closed", peer_port=7000))
    kernel = FakeKernel()
    kernel.inodes = {W1: {500, 502}}
    kernel.socks = [
        tcp(state="LISTEN", port=8000, peer="0.0.0.0", peer_port=0, inode=500),
        tcp(peer_port=7001, inode=502, rqueue=80, recv_ms=500, sent_ms=600),
    ]
    monitor = scene.monitor(use_kernel=True, kernel=kernel, stuck_after_s=10)
    loop = PollLoop(monitor, 0.5)
    with capture_logs() as logs:
        loop.poll_once()
        loop.poll_once()
    m = scrape(monitor)
    assert value(m, "wsgiwatch_stuck_requests", worker="0") == 1
    assert value(m, "wsgiwatch_worker_busy", worker="0") == 0
    assert value(m, "wsgiwatch_stalled_requests", worker="0") == 0  # not full: no stall
    (worker,) = monitor.state()["workers"]
    assert worker["slots"] == [] and [s["path"] for s in worker["stuck"]] == ["/never-closed"]
    assert worker["stuck"][0]["running_s"] >= 20
    assert [e["event"] for e in logs] == ["slot.stuck"]  # once, not per poll
    assert "busy for over 10 s" in loop.status()["degraded_reasons"][0]


def test_a_long_request_under_the_limit_is_busy(scene: Scene) -> None:
    w = scene.worker(W1, capacity=1)
    start(w, 0, Req(scene.now - 9 * S, route="/slow"))
    monitor = scene.monitor(stuck_after_s=10)
    monitor.poll()
    m = scrape(monitor)
    assert value(m, "wsgiwatch_worker_busy", worker="0") == 1
    assert value(m, "wsgiwatch_stuck_requests", worker="0") == 0


# --- a spool that fails under the reader ------------------------------------------------------
def test_a_spool_failing_mid_poll_is_dropped_and_the_others_read(
    scene: Scene, monkeypatch: pytest.MonkeyPatch
) -> None:
    bad, good = scene.worker(W1), scene.worker(W2)
    finish(good, Req(scene.now - 2 * S, scene.now - S, "/good"))
    monitor = scene.monitor()
    monitor.poll()
    (victim,) = [w for w in monitor.registry.live() if w.pid == W1]

    def fail() -> list[object]:
        raise SpoolFormatError(f"{bad.path}: file shrank under the reader")

    monkeypatch.setattr(victim.reader, "read_accepts", fail)
    finish(good, Req(scene.now - S, scene.now, "/good"))
    with capture_logs() as logs:
        monitor.poll()
    assert [w.pid for w in monitor.registry.live()] == [W2]
    m = scrape(monitor)
    assert value(m, "wsgiwatch_requests_total", route="/good", status_class="2xx") == 2
    assert value(m, "wsgiwatch_spool_errors_total") == 1
    (event,) = events(logs, "spool.read_failed")
    assert event["path"] == bad.path and "shrank" in str(event["error"])
    monitor.poll()  # the same file, unchanged: not reopened, not counted again
    assert value(scrape(monitor), "wsgiwatch_spool_errors_total") == 1
    os.utime(bad.path, ns=(time.time_ns(), time.time_ns() + 10**9))  # written anew
    monitor.poll()
    assert sorted(w.pid for w in monitor.registry.live()) == [W1, W2]


def test_a_spool_made_anew_at_the_same_path_is_followed(scene: Scene) -> None:
    """A worker that lost its file (removed, or the directory with it) makes a new one under
    the same name: the sidecar must read the new file, not the old one it still holds."""
    w = scene.worker(W1)
    finish(w, Req(scene.now - 3 * S, scene.now - 2 * S, "/old"))
    monitor = scene.monitor()
    monitor.poll()
    os.unlink(w.path)
    w2 = make_spool(scene.dir, W1, start_ticks=1000, capacity=2, slot_count=4)
    assert w2.path == w.path
    finish(w2, Req(scene.now - S, scene.now, "/new"))
    with capture_logs() as logs:
        monitor.poll()
        monitor.poll()
    m = scrape(monitor)
    assert value(m, "wsgiwatch_requests_total", route="/new", status_class="2xx") == 1
    assert [x.pid for x in monitor.registry.live()] == [W1]
    assert value(m, "wsgiwatch_worker_deaths_total", fate="killed") == 0  # it lives on
    assert events(logs, "worker.lost") == []


def test_a_spool_truncated_under_the_reader_is_dropped_with_that_reason(scene: Scene) -> None:
    w, other = scene.worker(W1), scene.worker(W2)
    monitor = scene.monitor()
    monitor.poll()
    os.truncate(w.path, 200)  # what a stray `> file` or a full disk's repair would do
    finish(other, Req(scene.now - S, scene.now, "/still-read"))
    with capture_logs() as logs:
        monitor.poll()
        monitor.poll()
    assert [x.pid for x in monitor.registry.live()] == [W2]
    m = scrape(monitor)
    assert value(m, "wsgiwatch_spool_errors_total") == 1
    assert value(m, "wsgiwatch_requests_total", route="/still-read", status_class="2xx") == 1
    assert [e["event"] for e in logs] == ["spool.read_failed"]  # not again every poll


def test_an_all_zero_spool_is_counted_once_it_has_stayed_so(scene: Scene) -> None:
    scene.proc.add(W1, 1000)
    path = os.path.join(scene.dir, fmt.spool_name(W1, 1000))
    with open(path, "wb") as f:
        f.write(b"\0" * fmt.spool_size(4, 64, 16))
    monitor = scene.monitor()
    monitor.poll()  # just created, as a writer would: not yet an error
    assert value(scrape(monitor), "wsgiwatch_spool_errors_total") == 0
    long_ago = time.time() - 60
    os.utime(path, (long_ago, long_ago))
    with capture_logs() as logs:
        monitor.poll()
        monitor.poll()
    assert value(scrape(monitor), "wsgiwatch_spool_errors_total") == 1
    assert value(scrape(monitor), "wsgiwatch_spool_unreadable_files") == 1
    assert [(e["event"], e["reason"]) for e in logs] == [("spool.unreadable", "zeroed")]


def test_a_forged_ring_head_is_resynchronised_counted_and_logged(scene: Scene) -> None:
    w = scene.worker(W1)
    finish(w, Req(scene.now - 2 * S, scene.now - S, "/before"))
    monitor = scene.monitor()
    monitor.poll()
    finish(w, Req(scene.now - S, scene.now, "/after"))
    fmt.U64.pack_into(w.mm, fmt.OFF_RING_HEAD, 2**63)  # an 8-byte write into a live spool
    with capture_logs() as logs:
        monitor.poll()
    m = scrape(monitor)
    assert value(m, "wsgiwatch_spool_resyncs_total") >= 1
    assert value(m, "wsgiwatch_requests_total", route="/after", status_class="2xx") == 1
    assert value(m, "wsgiwatch_spool_records_dropped_total") == 0
    assert "spool.resynced" in [e["event"] for e in logs]
