"""WSGIWatch never hurts the app: a broken or refused spool, a full disk, a full ring, an
internal error, every scoreboard slot busy, an odd environ, a fork. In each case the app's
responses are exactly what they are without the middleware, and the trouble is counted or
logged once, not per request.
"""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
import warnings
from typing import Any

import pytest
from apps.pep3333 import raw_app
from support.middleware_support import (
    SMALL,
    all_records,
    call_app,
    environ_for,
    forget_spool,
    read_spools,
    swapped,
)
from werkzeug.test import Client

from wsgiwatch import WSGIWatch
from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.reader import SpoolReader, list_spools
from wsgiwatch.worker import (
    accept_sources,
    internal_errors,
    middleware,
    python_path,
    request_keys,
    settings,
)

PATHS = ["/kinds/list1", "/kinds/generator", "/stream", "/write", "/kinds/empty-list", "/nope"]
DISABLED = "worker.recording_disabled"
INTERNAL = "worker.internal_error"

# Every test here runs against the C path and the pure-Python one.
pytestmark = pytest.mark.usefixtures("implementation")


@pytest.fixture
def log_once_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The "logged once" memory of internal errors is per process: start from scratch."""
    monkeypatch.setattr(internal_errors, "logged", [])


def response(app: Any, path: str) -> tuple[str, list[tuple[str, str]], bytes]:
    resp = Client(app).get(path)  # not buffered: werkzeug's buffering drops write() data
    try:
        return resp.status, list(resp.headers.items()), resp.get_data()
    finally:
        resp.close()


def assert_unchanged(watched: WSGIWatch, paths: list[str] = PATHS) -> None:
    for path in paths:
        assert response(watched, path) == response(raw_app, path), path


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "wsgiwatch" and text in r.getMessage()]


def header_of(directory: str) -> Any:
    (spool,) = read_spools(directory)
    return spool.header


# --- a spool directory we cannot or must not use ------------------------------------------


def _under_a_file(base: str) -> str:
    # mkdir fails with ENOTDIR below a regular file, for root too (chmod would not stop root)
    with open(os.path.join(base, "a-file"), "w"):
        pass
    return os.path.join(base, "a-file", "sub")


def _owned_by_another_user(base: str) -> str:
    path = os.path.join(base, "theirs")
    os.mkdir(path, 0o700)
    if os.getuid() == 0:
        os.chown(path, 65534, 65534)  # nobody
        return path
    os.rmdir(path)
    return "/usr"  # not root: any root-owned directory is another user's


def _world_writable(base: str) -> str:
    path = os.path.join(base, "open")
    os.mkdir(path)
    os.chmod(path, 0o777)
    return path


def _group_writable(base: str) -> str:
    path = os.path.join(base, "group")
    os.mkdir(path)
    os.chmod(path, 0o770)
    return path


def _symlink_to_ours(base: str) -> str:
    target = os.path.join(base, "real")
    os.mkdir(target, 0o700)
    os.symlink(target, os.path.join(base, "link"))
    return os.path.join(base, "link")


BAD_DIRS = {
    "under-a-file": _under_a_file,
    "another-users": _owned_by_another_user,
    "world-writable": _world_writable,
    "group-writable": _group_writable,
    "symlink": _symlink_to_ours,
}


@pytest.mark.parametrize("kind", sorted(BAD_DIRS))
def test_bad_spool_dir_disables_recording_and_logs_once(
    spool_dir: str, kind: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="wsgiwatch")
    bad = BAD_DIRS[kind](spool_dir)
    try:
        watched = WSGIWatch(raw_app, spool_dir=bad, **SMALL)
        assert_unchanged(watched)
        assert_unchanged(WSGIWatch(raw_app, spool_dir=bad, **SMALL))  # a second instance
        found = messages(caplog, DISABLED)
        assert len(found) == 1, [r.getMessage() for r in caplog.records]
        assert found[0].levelno == logging.WARNING
        assert bad in found[0].getMessage()
        if kind == "symlink":  # said as it is, not as "not a directory"
            assert "symbolic link" in found[0].getMessage()
        assert list_spools(bad) == []  # nothing planted in a directory we refused
    finally:
        forget_spool(bad)


def test_fallocate_enospc_disables_recording_and_logs_once(
    watch_dir: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="wsgiwatch")
    calls: list[int] = []

    def full(fd: int, offset: int, length: int) -> None:
        calls.append(length)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "posix_fallocate", full)
    watched = WSGIWatch(raw_app, spool_dir=watch_dir, **SMALL)
    assert_unchanged(watched)
    assert len(calls) == 1  # tried once, not per request
    found = messages(caplog, DISABLED)
    assert len(found) == 1
    assert os.strerror(errno.ENOSPC) in found[0].getMessage()
    assert os.listdir(watch_dir) == []  # the half-made file is gone


# --- a full ring --------------------------------------------------------------------------

RING = 8
FLOOD = 100


def _flood(watched: WSGIWatch, count: int, start: int = 0) -> None:
    expected = response(raw_app, "/kinds/list2")
    for i in range(start, start + count):
        assert response(watched, f"/kinds/list2?{i}") == expected


def _assert_newest_intact(records: list[Any], total: int) -> None:
    assert [r.seq for r in records] == list(range(total - RING, total))
    assert [r.request for r in records] == list(range(total - RING + 1, total + 1))
    for r in records:
        assert (r.route, r.status, r.bytes_sent, r.method) == ("/kinds/list2", 200, 11, "GET")
        assert r.flags & (fmt.FLAG_APP_RAISED | fmt.FLAG_CLIENT_GONE) == 0
        assert r.entry_ns <= r.headers_ns <= r.exit_ns


def _watched_ring(directory: str) -> WSGIWatch:
    return WSGIWatch(raw_app, spool_dir=directory, slots=4, ring_size=RING, accept_events=4)


def test_full_ring_without_reader_keeps_the_newest(watch_dir: str) -> None:
    watched = _watched_ring(watch_dir)
    _flood(watched, FLOOD)
    (path,) = list_spools(watch_dir)
    with SpoolReader(path, track=False) as reader:
        result = reader.read_records()
        assert result.torn == 0
        _assert_newest_intact(result.records, FLOOD)
        header = reader.header()
        assert header.ring_head == FLOOD
        assert header.write_errors == 0


def test_reader_left_behind_counts_what_it_lost(watch_dir: str) -> None:
    watched = _watched_ring(watch_dir)
    _flood(watched, 1)
    (path,) = list_spools(watch_dir)
    with SpoolReader(path, track=False) as viewer, SpoolReader(path, track=True) as sidecar:
        assert len(sidecar.read_records().records) == 1
        _flood(watched, FLOOD - 1, start=1)
        seen = viewer.read_records()  # never read: it lost all but the newest RING
        assert seen.lost == FLOOD - RING
        _assert_newest_intact(seen.records, FLOOD)
        tracked = sidecar.read_records()
        assert tracked.lost == FLOOD - RING - 1
        _assert_newest_intact(tracked.records, FLOOD)
        assert sidecar.header().reader_lost == FLOOD - RING - 1
        assert sidecar.header().reader_cursor == FLOOD


def test_restarted_tracking_reader_counts_records_lost_while_away(watch_dir: str) -> None:
    watched = _watched_ring(watch_dir)
    _flood(watched, 1)
    (path,) = list_spools(watch_dir)
    with SpoolReader(path, track=True) as sidecar:
        assert len(sidecar.read_records().records) == 1  # the saved cursor is now 1
    _flood(watched, FLOOD - 1, start=1)
    with SpoolReader(path, track=True) as restarted:
        result = restarted.read_records()
        _assert_newest_intact(result.records, FLOOD)
        assert result.lost == FLOOD - RING - 1  # seqs 1..91 were overwritten while away
        assert restarted.header().reader_lost == FLOOD - RING - 1


def test_first_tracking_reader_after_a_flood_counts_the_lost(watch_dir: str) -> None:
    watched = _watched_ring(watch_dir)
    _flood(watched, FLOOD)
    (path,) = list_spools(watch_dir)
    with SpoolReader(path, track=True) as sidecar:
        assert sidecar.header().reader_cursor == 0  # nobody ever read this spool
        result = sidecar.read_records()
        _assert_newest_intact(result.records, FLOOD)
        assert result.lost == FLOOD - RING
        assert sidecar.header().reader_lost == FLOOD - RING


# --- an error inside wsgiwatch --------------------------------------------------------------


def _boom(*args: Any) -> None:
    raise RuntimeError("wsgiwatch broke")


def _behind_a_proxy(app: Any) -> Any:
    def proxied(environ: dict[str, Any], start_response: Any) -> Any:
        environ["HTTP_X_REQUEST_START"] = f"t={time.time_ns() // 1000}"
        return app(environ, start_response)

    return proxied


@pytest.mark.usefixtures("log_once_again")
def test_internal_error_at_exit_leaves_the_response_alone(
    watch_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    watched = WSGIWatch(raw_app, spool_dir=watch_dir, trusted_proxies=1, **SMALL)
    assert_unchanged(watched, ["/kinds/list1"])  # opens the spool, one good record
    with swapped(accept_sources, proxy_wall_ns=_boom):  # a front proxy's header is read at exit
        assert_unchanged(_behind_a_proxy(watched))
    header = header_of(watch_dir)
    assert header.write_errors == len(PATHS)
    found = messages(caplog, INTERNAL)
    assert len(found) == 1
    assert found[0].exc_info is not None and found[0].exc_info[0] is RuntimeError
    (spool,) = read_spools(watch_dir)
    assert spool.busy == []  # the slots were freed all the same
    assert_unchanged(watched, ["/kinds/list1"])
    # The failed ones claimed no ring entry (nothing torn to hold readers back), and
    # recording goes on.
    assert header_of(watch_dir).ring_head == 2


@pytest.mark.usefixtures("log_once_again")
def test_internal_error_at_entry_leaves_the_response_alone(
    watch_dir: str, caplog: pytest.LogCaptureFixture
) -> None:
    watched = WSGIWatch(raw_app, spool_dir=watch_dir, **SMALL)
    assert_unchanged(watched, ["/kinds/list1"])
    with swapped(request_keys, path_bytes={}, route_for_path=_boom):  # the route is made at entry
        assert_unchanged(watched, PATHS[:3])
    header = header_of(watch_dir)
    assert header.write_errors == 3
    assert header.ring_head == 1  # the failed ones wrote nothing
    assert len(messages(caplog, INTERNAL)) == 1
    assert_unchanged(watched, ["/kinds/list1"])
    (spool,) = read_spools(watch_dir)
    assert spool.busy == [] and len(spool.records) == 2


@pytest.mark.usefixtures("log_once_again")
def test_internal_error_at_entry_does_not_leak_scoreboard_slots(
    watch_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Python path takes the slot before it packs it; a failed pack gives it back. (The
    C path takes the slot after the last step that can fail.)"""
    watched = middleware.PythonWSGIWatch(
        raw_app, spool_dir=watch_dir, slots=2, ring_size=16, accept_events=4
    )
    assert_unchanged(watched, ["/kinds/list1"])
    with monkeypatch.context() as patch:
        patch.setattr(python_path, "_SLOT_pack", _boom)
        assert_unchanged(watched, ["/kinds/list1"] * 2)
    assert_unchanged(watched, ["/kinds/list1"] * 2)
    (spool,) = read_spools(watch_dir)
    assert spool.header.write_errors == 2
    assert spool.header.slots_exhausted == 0, "slots taken by the failed requests never came back"
    assert [r.slot for r in spool.records] == [0, 0, 0]


# --- every scoreboard slot busy -------------------------------------------------------------


def test_all_slots_busy_still_records_every_request(watch_dir: str) -> None:
    in_app = threading.Barrier(5, timeout=10)
    release = threading.Event()

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        in_app.wait()
        release.wait(10)
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [environ["PATH_INFO"].encode()]

    watched = WSGIWatch(app, spool_dir=watch_dir, slots=2, ring_size=16, accept_events=4)
    results: dict[str, Any] = {}

    def run(name: str) -> None:
        try:
            results[name] = call_app(watched, environ_for(f"/{name}"))
        except BaseException as exc:  # reported by the assertion below
            results[name] = exc

    threads = [threading.Thread(target=run, args=(f"r{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    try:
        in_app.wait()  # all four are inside the app now
        (spool,) = read_spools(watch_dir)
        assert len(spool.busy) == 2
        assert spool.header.slots_exhausted == 2
    finally:
        release.set()
        for t in threads:
            t.join(10)
    assert results == {
        f"r{i}": ("200 OK", [("Content-Type", "text/plain")], f"/r{i}".encode()) for i in range(4)
    }
    (spool,) = read_spools(watch_dir)
    assert sorted(r.route for r in spool.records) == [f"/r{i}" for i in range(4)]
    assert sorted(r.slot for r in spool.records) == [0, 1, fmt.NO_SLOT, fmt.NO_SLOT]
    for r in spool.records:
        assert r.status == 200 and r.entry_ns <= r.headers_ns <= r.exit_ns
        assert r.peer == "127.0.0.1" and r.method == "GET" and r.request > 0
    assert spool.header.slots_exhausted == 2
    assert spool.header.slot_high_water == 2
    assert spool.header.write_errors == 0
    assert spool.busy == []


@pytest.mark.usefixtures("log_once_again")
def test_slot_taken_by_another_thread_between_check_and_pop(watch_dir: str) -> None:
    """Two threads see one free slot; the other one pops it first (the GIL may switch
    between ``if free`` and ``free.pop()``). This request must still be recorded."""
    watched = WSGIWatch(raw_app, spool_dir=watch_dir, slots=4, ring_size=16, accept_events=4)
    assert_unchanged(watched, ["/kinds/list1"])  # slot 0 is now on the free list
    writer = settings.ready[watch_dir]
    assert writer is not None
    stolen: list[int] = []

    class Racy(list):  # type: ignore[type-arg]
        def __len__(self) -> int:
            n = super().__len__()
            if n and not stolen:
                stolen.append(super().pop())  # the other thread wins the race
            return n

    writer.free_slots = Racy(writer.free_slots)
    assert_unchanged(watched, ["/kinds/list2"])
    writer.free_slots = list(writer.free_slots) + stolen
    header = header_of(watch_dir)
    assert header.write_errors == 0
    assert [r.route for r in all_records(watch_dir)] == ["/kinds/list1", "/kinds/list2"]


# --- odd environs -----------------------------------------------------------------------------


def _simple_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]


def _environ(drop: tuple[str, ...] = (), **extra: Any) -> dict[str, Any]:
    env = environ_for("/plain")
    for key in drop:
        env.pop(key, None)
    env.update(extra)
    return env


ODD_ENVIRONS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    # name: (environ, what the record says)
    "empty": ({}, {"route": "/", "method": "OTHER", "peer": "", "peer_port": 0}),
    "no-peer-no-path": (
        _environ(drop=("REMOTE_ADDR", "REMOTE_PORT", "PATH_INFO", "SCRIPT_NAME")),
        {"route": "/", "peer": "", "peer_port": 0},
    ),
    "port-not-a-number": (
        _environ(REMOTE_PORT="http", SERVER_PORT="eighty"),
        {"peer_port": 0, "server_port": 0},
    ),
    "ports-as-ints": (_environ(REMOTE_PORT=40001, SERVER_PORT=8080), {"peer_port": 40001}),
    "none-values": (
        _environ(
            REMOTE_ADDR=None,
            REMOTE_PORT=None,
            PATH_INFO=None,
            REQUEST_METHOD=None,
            SCRIPT_NAME=None,
        ),
        {"route": "/", "method": "OTHER", "peer": "", "peer_port": 0},
    ),
    "unknown-method": (_environ(REQUEST_METHOD="BREW"), {"method": "OTHER"}),
    "huge-path": (_environ(PATH_INFO="/" + "a" * 100_000), {}),
    "unicode-path": (_environ(PATH_INFO="/h\u00e9llo/w\u00f6rld/\U0001f600/42"), {}),
    "utf8-over-latin1": (
        _environ(PATH_INFO="/caf\u00e9/42".encode().decode("latin-1")),
        {"route": "/caf\u00e9/:id"},
    ),
    "surrogates": (_environ(PATH_INFO="/\udcff/\ud800"), {}),
    "script-name": (
        _environ(SCRIPT_NAME="/app", PATH_INFO="/users/42"),
        {"route": "/app/users/:id"},
    ),
    "ipv6-peer": (_environ(REMOTE_ADDR="2001:db8::1:2:3:4:5"), {"peer": "2001:db8::1:2:3:4:5"}),
    "peer-as-int": (_environ(REMOTE_ADDR=2130706433), {}),
    "bytes-values": (
        _environ(PATH_INFO=b"/bytes/42", REMOTE_ADDR=b"10.0.0.1", REQUEST_METHOD=b"GET"),
        {},
    ),
    "unhashable-method": (_environ(REQUEST_METHOD=["GET"]), {"method": "OTHER"}),
    "unhashable-port": (_environ(REMOTE_PORT=["40000"]), {"peer_port": 0}),
    "unhashable-server-port": (_environ(SERVER_PORT={"port": 80}), {"server_port": 0}),
}


@pytest.mark.usefixtures("log_once_again")
@pytest.mark.parametrize("name", sorted(ODD_ENVIRONS))
def test_odd_environ_never_raises_and_is_recorded(watch_dir: str, name: str) -> None:
    environ, expected = ODD_ENVIRONS[name]
    # One slot: a request that leaked its slot would leave the next one without any.
    watched = WSGIWatch(_simple_app, spool_dir=watch_dir, slots=1, ring_size=16, accept_events=4)
    assert call_app(watched, dict(environ)) == call_app(_simple_app, dict(environ))
    assert call_app(watched, environ_for("/after")) == call_app(_simple_app, environ_for("/"))
    (spool,) = read_spools(watch_dir)
    assert spool.header.write_errors == 0
    assert spool.header.slots_exhausted == 0
    assert spool.busy == []
    odd, after = spool.records
    assert (odd.status, odd.bytes_sent, odd.flags) == (200, 2, 0)
    assert odd.entry_ns <= odd.headers_ns <= odd.exit_ns
    assert len(odd.route.encode()) <= 64 and odd.route.startswith("/")
    for field, value in expected.items():
        assert getattr(odd, field) == value, field
    assert after.route == "/after" and after.slot == 0


def test_huge_path_is_cut_on_a_character_boundary(watch_dir: str) -> None:
    watched = WSGIWatch(_simple_app, spool_dir=watch_dir, **SMALL)
    # Segments of 15 two-byte characters (shorter than a folded long segment), as a server
    # hands UTF-8 over (latin-1 in a str)
    segment = "\u00e9" * 15
    path = ("/" + "/".join([segment] * 6)).encode().decode("latin-1")
    call_app(watched, _environ(PATH_INFO=path))
    (record,) = all_records(watch_dir)
    # 63 bytes: the 64th would split a character
    assert record.route == "/" + segment + "/" + segment + "/"


# --- fork -----------------------------------------------------------------------------------


def _serve_in_child(watched: WSGIWatch, path: str) -> int:
    """Fork; the child serves one request through ``watched`` and exits. Returns its pid."""
    with warnings.catch_warnings():
        # Python 3.12+ warns about fork() in a process with threads; none of ours run here.
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        code = 1
        try:
            status, _, body = call_app(watched, environ_for(path))
            code = 0 if (status, body) == ("200 OK", b"hello world") else 2
        finally:
            os._exit(code)
    deadline = time.monotonic() + 10
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            raise AssertionError("the forked child did not finish")
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(status) == 0
    return pid


def test_forked_child_writes_its_own_spool(watch_dir: str) -> None:
    watched = WSGIWatch(raw_app, spool_dir=watch_dir, **SMALL)
    assert_unchanged(watched, ["/kinds/list1"])
    child = _serve_in_child(watched, "/kinds/tuple1")
    assert_unchanged(watched, ["/kinds/list2"])
    spools = {s.header.pid: s for s in read_spools(watch_dir)}
    assert set(spools) == {os.getpid(), child}
    parent_spool, child_spool = spools[os.getpid()], spools[child]
    assert [r.route for r in parent_spool.records] == ["/kinds/list1", "/kinds/list2"]
    assert [r.pid for r in parent_spool.records] == [os.getpid()] * 2
    assert [r.route for r in child_spool.records] == ["/kinds/tuple1"]
    assert child_spool.header.ppid == os.getpid()
    assert child_spool.records[0].request == 1  # the child numbers its own requests
    assert child_spool.busy == [] and parent_spool.busy == []


def test_forked_child_records_its_own_thread_id(watch_dir: str) -> None:
    watched = WSGIWatch(raw_app, spool_dir=watch_dir, **SMALL)
    assert_unchanged(watched, ["/kinds/list1"])
    child = _serve_in_child(watched, "/kinds/tuple1")
    spools = {s.header.pid: s for s in read_spools(watch_dir)}
    assert spools[os.getpid()].records[0].tid == threading.get_native_id()
    # The child's only thread is the one that forked; its kernel thread id is the child pid.
    assert spools[child].records[0].tid == child
