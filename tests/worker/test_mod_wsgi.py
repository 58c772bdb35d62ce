"""mod_wsgi's start times as the spool records them, and its way of giving WSGIWATCH_DIR
(Apache's SetEnv arrives in the WSGI environ, not in os.environ)."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest
from support.middleware_support import call_app, environ_for, forget_spool, read_spools

from wsgiwatch.spool import layout as fmt
from wsgiwatch.worker.middleware import WSGIWatch
from wsgiwatch.worker.mod_wsgi import mod_wsgi_times

US = 1_000
NOW_WALL = 1_795_742_200_000_000_000
NOW_MONO = 50_000_000_000_000


def seconds(wall_ns: int) -> float:
    return wall_ns / 1e9


@pytest.mark.parametrize(
    "as_text",
    [
        lambda ns: str(ns // US),  # mod_wsgi 4.x (Debian's): microsecond strings
        lambda ns: round(ns / 1e9, 6),  # mod_wsgi 6.x: floats of seconds
    ],
    ids=["microsecond-strings", "floats"],
)
def test_daemon_mode_gives_backlog_and_apache_times(as_text: Any) -> None:
    request, queue, daemon = (
        NOW_WALL - 1_500_000_000,
        NOW_WALL - 1_400_000_000,
        NOW_WALL - 2_000_000,
    )
    environ = {
        "mod_wsgi.request_start": as_text(request),
        "mod_wsgi.queue_start": as_text(queue),
        "mod_wsgi.daemon_start": as_text(daemon),
    }
    accept, arrival, apache = mod_wsgi_times(environ, NOW_WALL, NOW_MONO)
    # accept = daemon_start, arrival = queue_start (on the monotonic clock): the backlog
    # phase is accept - arrival; Apache's own start is the front of the line.
    assert accept == pytest.approx(NOW_MONO - 2_000_000, abs=US)
    assert arrival == pytest.approx(NOW_MONO - 1_400_000_000, abs=US)
    assert apache == pytest.approx(request, abs=US)


def test_embedded_mode_request_start_is_the_accept() -> None:
    environ = {"mod_wsgi.request_start": str((NOW_WALL - 5_000_000) // US)}
    assert mod_wsgi_times(environ, NOW_WALL, NOW_MONO) == (NOW_MONO - 5_000_000, 0, 0)


def test_impossible_orders_and_junk_give_nothing() -> None:
    backwards = {
        "mod_wsgi.request_start": str(NOW_WALL // US),
        "mod_wsgi.queue_start": str((NOW_WALL - 1000) // US),
        "mod_wsgi.daemon_start": str((NOW_WALL - 9_000_000) // US),  # before the queue
    }
    assert mod_wsgi_times(backwards, NOW_WALL, NOW_MONO) == (NOW_MONO, 0, 0)
    assert mod_wsgi_times({"mod_wsgi.request_start": "soon"}, NOW_WALL, NOW_MONO) == (0, 0, 0)


def test_records_carry_the_daemon_times(implementation: type, watch_dir: str) -> None:
    app = WSGIWatch(lambda e, sr: (sr("200 OK", []), [b"ok"])[1], spool_dir=watch_dir)
    wall = time.time_ns()
    environ = environ_for(
        "/",
        **{
            "mod_wsgi.request_start": str((wall - 900_000_000) // US),
            "mod_wsgi.queue_start": str((wall - 800_000_000) // US),
            "mod_wsgi.daemon_start": str((wall - 1_000_000) // US),
        },
    )
    call_app(app, environ)
    ((record,),) = [s.records for s in read_spools(watch_dir)]
    assert record.accept_source == "mod_wsgi"
    assert record.accept_ns - record.arrival_ns == pytest.approx(799_000_000, abs=2 * US)
    assert seconds(record.proxy_wall_ns) == pytest.approx(seconds(wall - 900_000_000), abs=1e-5)
    assert record.flags & fmt.FLAG_APP_RAISED == 0


def test_setenv_directory_arrives_in_the_environ(
    implementation: type, spool_dir: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("WSGIWATCH_DIR", raising=False)
    app = WSGIWatch(lambda e, sr: (sr("200 OK", []), [b"ok"])[1])
    try:
        for _ in range(2):
            call_app(app, environ_for("/", WSGIWATCH_DIR=spool_dir))
        (spool,) = read_spools(spool_dir)
        assert len(spool.records) == 2
        assert app.spool_dir == spool_dir
    finally:
        forget_spool(spool_dir)


def test_an_explicit_directory_wins_over_setenv(
    implementation: type, watch_dir: str, tmp_path: Any
) -> None:
    other = str(tmp_path / "other")
    app = WSGIWatch(lambda e, sr: (sr("200 OK", []), [b"ok"])[1], spool_dir=watch_dir)
    call_app(app, environ_for("/", WSGIWATCH_DIR=other))
    assert len(read_spools(watch_dir)) == 1 and not os.path.exists(other)
