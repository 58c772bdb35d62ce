"""The accept hook on by default: ``WSGIWatch(app)`` alone hooks the server it runs in.

Real servers started the way users start them, with no wsgiwatch configuration at all
(gunicorn without ``-c``, ``waitress.serve``, cheroot's ``wsgi.Server``): each worker's
spool must say it is hooked, carry an accept event for the client's connection, and the
record an exact accept time from the hook. Then the rules around it: only tested
versions are touched, once, with one log line, and ``accept_hook=False`` installs nothing.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
import types
from collections.abc import Iterator
from contextlib import AbstractContextManager
from typing import Any

import pytest
from apps.client import Connection, fetch
from apps.spools import collect, wait_for_spool
from support.servers import Server, cheroot, gunicorn, waitress

from wsgiwatch.spool.reader import SpoolReader
from wsgiwatch.worker import autohook, middleware

APP = "apps.probe:application"


def server(kind: str, spool_dir: str) -> AbstractContextManager[Server]:
    if kind == "waitress":
        return waitress(APP, spool_dir, threads=2)
    if kind == "cheroot":
        return cheroot(APP, spool_dir, threads=2)
    if kind == "preload":
        return gunicorn(APP, spool_dir, worker_class="gthread", threads=2, extra=["--preload"])
    return gunicorn(APP, spool_dir, worker_class=kind, threads=2 if kind == "gthread" else 1)


@pytest.mark.parametrize("kind", ["gthread", "sync", "gevent", "preload", "waitress", "cheroot"])
def test_default_setup_hooks_the_server(kind: str, spool_dir: str) -> None:
    with server(kind, spool_dir) as running:
        with Connection(running.port) as conn:  # two requests on one kept-alive connection
            first = conn.get("/r/first")
            second = conn.get("/r/second")
        with SpoolReader(wait_for_spool(spool_dir), track=False) as reader:
            records = {r.route: r for r in collect(reader, 2)}
            header = reader.header()
            accepts = [e for e in reader.read_accepts() if e.peer_port == first.local_port]
    assert {first.status, second.status} == {200}
    assert header.accept_hook, f"{kind}: the spool does not say it is hooked"
    assert len(accepts) == 1, accepts
    one, two = records["/r/first"], records["/r/second"]
    assert one.accept_source == two.accept_source == "hook"
    # The accept the hook saw is the one the record carries, and it came before the request.
    assert one.accept_ns == accepts[0].accept_ns <= one.entry_ns
    assert first.start_ns <= one.accept_ns
    # A kept-alive connection's second request is ready when its bytes came, not at accept
    # (sync workers close the connection after each request: there it is a new one).
    if kind != "sync":
        assert two.queue_wait_ns is not None and 0 <= two.queue_wait_ns < 50_000_000


def test_cheroot_times_a_short_wait_behind_a_slow_request(spool_dir: str) -> None:
    """cheroot had no hook: now a wait shorter than a kernel poll is timed exactly."""
    with cheroot(APP, spool_dir, threads=1) as running:
        slow = threading.Thread(target=fetch, args=(running.port, "/slow/0.3"))
        slow.start()
        time.sleep(0.05)
        fast = fetch(running.port, "/r/fast")
        slow.join()
        with SpoolReader(wait_for_spool(spool_dir), track=False) as reader:
            records = {r.route: r for r in collect(reader, 2)}
    waited = records["/r/fast"].queue_wait_ns
    assert waited is not None and 150_000_000 < waited <= fast.latency_ns


# -- the rules, on stand-in server modules (a version this machine does not have) ----------


@pytest.fixture
def fake_waitress(monkeypatch: pytest.MonkeyPatch) -> Iterator[type]:
    """A module tree that looks like waitress to the installer, and a fresh hook state."""

    class Dispatcher:
        def accept(self) -> Any:
            return None

    class BaseWSGIServer(Dispatcher):
        def add_task(self, channel: Any) -> None:
            pass

    package = types.ModuleType("waitress")
    package.__version__ = "3.0.2"  # type: ignore[attr-defined]
    module = types.ModuleType("waitress.server")
    module.BaseWSGIServer = BaseWSGIServer  # type: ignore[attr-defined]
    package.server = module  # type: ignore[attr-defined]
    for name in [n for n in sys.modules if n.split(".")[0] in ("gunicorn", "cheroot", "waitress")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "waitress", package)
    monkeypatch.setitem(sys.modules, "waitress.server", module)
    monkeypatch.setattr(autohook, "_state", {"dir": None, "announced": set(), "marked_pid": 0})
    yield BaseWSGIServer


def test_a_tested_version_is_hooked_once(fake_waitress: type, caplog: Any) -> None:
    caplog.set_level(logging.INFO, logger="wsgiwatch")
    assert autohook.install("/nonexistent") == ["waitress.server"]
    accept = fake_waitress.accept
    assert getattr(accept, "_wsgiwatch_hook", False)
    assert autohook.install("/nonexistent") == []  # a second WSGIWatch: nothing more
    assert fake_waitress.accept is accept
    notices = [
        r.getMessage() for r in caplog.records if "worker.accept_hook_installed" in r.getMessage()
    ]
    assert len(notices) == 1 and "accept_hook=False" in notices[0]


def test_an_untested_version_is_left_alone_and_said_once(fake_waitress: type, caplog: Any) -> None:
    sys.modules["waitress"].__version__ = "4.0.0"  # type: ignore[attr-defined]
    caplog.set_level(logging.INFO, logger="wsgiwatch")
    original = fake_waitress.__dict__.get("accept")
    assert autohook.install("/nonexistent") == []
    assert autohook.install("/nonexistent") == []
    assert fake_waitress.__dict__.get("accept") is original
    assert not hasattr(fake_waitress.add_task, "_wsgiwatch_hook")
    notices = [
        r.getMessage() for r in caplog.records if "worker.accept_hook_skipped" in r.getMessage()
    ]
    assert len(notices) == 1 and "waitress 4.0" in notices[0] and "3.x" in notices[0]


def test_missing_internals_are_left_alone(fake_waitress: type) -> None:
    del fake_waitress.add_task
    assert autohook.install("/nonexistent") == []
    assert not getattr(fake_waitress.accept, "_wsgiwatch_hook", False)


def test_accept_hook_false_installs_nothing(
    fake_waitress: type, monkeypatch: pytest.MonkeyPatch, watch_dir: str
) -> None:
    middleware.WSGIWatch(lambda e, s: [], spool_dir=watch_dir, accept_hook=False)
    assert not getattr(fake_waitress.accept, "_wsgiwatch_hook", False)
    middleware.WSGIWatch(lambda e, s: [], spool_dir=watch_dir)
    assert getattr(fake_waitress.accept, "_wsgiwatch_hook", False)
