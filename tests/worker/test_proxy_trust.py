"""Front proxy headers (``X-Request-Start``, ``X-Queue-Start``) are believed only when the
operator says how many proxies add them (``trusted_proxies``), and then only the value the
outermost trusted proxy added; a time that cannot be right is refused and counted in the
spool header (``times_rejected``), never recorded. In process against both paths, and
against real gunicorn, where any client can send the header."""

from __future__ import annotations

import time
from typing import Any

import pytest
from apps.client import fetch
from support.middleware_support import (
    SMALL,
    all_records,
    call_app,
    environ_for,
    http_get,
    read_spools,
    wait_for,
)
from support.servers import gunicorn

from wsgiwatch import WSGIWatch
from wsgiwatch.spool import layout as fmt

pytestmark = pytest.mark.usefixtures("implementation")

S = 1_000_000_000


def hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def t_ms(wall_ns: int) -> str:
    """An nginx-style value: ``t=`` seconds with milliseconds."""
    return f"t={wall_ns // 1_000_000 / 1000:.3f}"


def recorded(
    watch_dir: str, header: str | None, key: str = "HTTP_X_REQUEST_START", **kw: Any
) -> tuple[int, int]:
    """(proxy_wall_ns of the record, times_rejected) for one request carrying ``header``."""
    watched = WSGIWatch(hello, spool_dir=watch_dir, **SMALL, **kw)
    extra = {key: header} if header is not None else {}
    call_app(watched, environ_for("/p", **extra))
    (spool,) = read_spools(watch_dir)
    (record,) = spool.records
    return record.proxy_wall_ns, _times_rejected(spool.path)


def _times_rejected(path: str) -> int:
    with open(path, "rb") as f:
        f.seek(fmt.OFF_TIMES_REJECTED)
        value: int = fmt.U64.unpack(f.read(8))[0]
    return value


def test_by_default_no_proxy_header_is_believed(watch_dir: str) -> None:
    sent = time.time_ns() - 5_000_000
    assert recorded(watch_dir, t_ms(sent)) == (0, 0)  # ignored: not even parsed


def test_one_trusted_proxy_its_value_is_recorded(watch_dir: str) -> None:
    sent = time.time_ns() - 5_000_000
    wall, rejected = recorded(watch_dir, t_ms(sent), trusted_proxies=1)
    assert abs(wall - sent) < 1_000_000 and rejected == 0


def test_x_queue_start_too(watch_dir: str) -> None:
    sent = time.time_ns() - 5_000_000
    wall, _ = recorded(watch_dir, str(sent // 1000), "HTTP_X_QUEUE_START", trusted_proxies=1)
    assert abs(wall - sent) < 1_000


def test_a_value_the_client_put_before_the_proxys_is_ignored(watch_dir: str) -> None:
    now = time.time_ns()
    forged, real = now - 1800 * S, now - 3_000_000
    wall, rejected = recorded(watch_dir, f"{t_ms(forged)}, {t_ms(real)}", trusted_proxies=1)
    assert abs(wall - real) < 1_000_000 and rejected == 0


def test_two_trusted_proxies_the_outer_ones_value(watch_dir: str) -> None:
    now = time.time_ns()
    forged, outer, inner = now - 1800 * S, now - 9_000_000, now - 2_000_000
    header = f"{t_ms(forged)}, {t_ms(outer)}, {t_ms(inner)}"
    wall, _ = recorded(watch_dir, header, trusted_proxies=2)
    assert abs(wall - outer) < 1_000_000


@pytest.mark.parametrize(
    "header",
    [
        pytest.param(t_ms(time.time_ns() - 3601 * S), id="over-an-hour-old"),
        pytest.param("FUTURE", id="a-minute-ahead"),
        pytest.param("t=yesterday", id="garbage"),
        pytest.param("t=0", id="zero"),
        pytest.param("t=-5", id="negative"),
    ],
)
def test_implausible_times_are_refused_and_counted(watch_dir: str, header: str) -> None:
    if header == "FUTURE":
        header = t_ms(time.time_ns() + 60 * S)
    assert recorded(watch_dir, header, trusted_proxies=1) == (0, 1)


@pytest.mark.parametrize("count", [-1, 256])
def test_trusted_proxies_out_of_range_is_refused(watch_dir: str, count: int) -> None:
    with pytest.raises(ValueError, match="trusted_proxies"):
        WSGIWatch(hello, spool_dir=watch_dir, trusted_proxies=count)


def test_mod_wsgi_times_that_cannot_be_right_are_refused_and_counted(watch_dir: str) -> None:
    watched = WSGIWatch(hello, spool_dir=watch_dir, **SMALL)
    now = time.time()
    for value in (now - 0.004, now - 7200, "garbage", now + 120):
        call_app(watched, environ_for("/m", **{"mod_wsgi.request_start": value}))
    (spool,) = read_spools(watch_dir)
    sources = [r.accept_source for r in spool.records]
    assert sources == ["mod_wsgi", "none", "none", "none"]
    assert [bool(r.accept_ns) for r in spool.records] == [True, False, False, False]
    assert _times_rejected(spool.path) == 3
    assert spool.header.write_errors == 0


# --- real gunicorn: any client can send the header -----------------------------------------


@pytest.mark.parametrize(
    ("app", "trusted"),
    [("apps.probe:application", False), ("apps.probe:behind_one_proxy", True)],
)
def test_forged_headers_sent_to_gunicorn(
    spool_dir: str, app: str, trusted: bool, implementation: type
) -> None:
    env = {"WSGIWATCH_PURE_PYTHON": "1"} if implementation.__name__ == "PythonWSGIWatch" else {}
    now = time.time_ns()
    sent = {
        "/r/hour-old": t_ms(now - 3700 * S),
        "/r/recent": t_ms(now - 2_000_000),
        "/r/future": t_ms(now + 3600 * S),
    }
    with gunicorn(app, spool_dir, env=env) as server:
        fetch(server.port, "/r/warm")  # opens the spool
        for path, header in sent.items():
            status, _, _ = http_get(server.port, path, headers={"X-Request-Start": header})
            assert status == 200

        def records() -> dict[str, Any] | None:
            found = {r.route: r for r in all_records(spool_dir)}
            return found if len(found) == len(sent) + 1 else None

        found = wait_for("the records", records)
        (spool,) = read_spools(spool_dir)
        rejected = _times_rejected(spool.path)
    assert bool(spool.header.accelerated) == (not env)
    assert found["/r/hour-old"].proxy_wall_ns == 0
    assert found["/r/future"].proxy_wall_ns == 0
    if trusted:
        assert abs(found["/r/recent"].proxy_wall_ns - (now - 2_000_000)) < 2_000_000
        assert rejected == 2
    else:
        assert found["/r/recent"].proxy_wall_ns == 0
        assert rejected == 0  # not read at all
