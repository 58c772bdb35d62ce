"""The ``wsgiwatch`` command line: option parsing, environment variables, ``sidecar``."""

from __future__ import annotations

import argparse
import io
import json
import logging
import signal
import socket
from collections.abc import Iterator
from datetime import datetime

import pytest
import structlog
from support.cli_support import FAKE, free_port, get, log_events, spawn, wait_http
from support.fake_monitor import FakeMonitor

from wsgiwatch import logs
from wsgiwatch.cli import build_parser, main
from wsgiwatch.cli.sidecar import (
    DEFAULT_MONITOR_FACTORY,
    ConfigError,
    SidecarSettings,
    build_monitor,
    load_factory,
    parse_listen,
    parse_ports,
    settings_from,
)


def sidecar_args(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(["sidecar", *argv])


# -- parsing --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("127.0.0.1:9808", ("127.0.0.1", 9808)),
        ("[::1]:9808", ("::1", 9808)),
        ("9808", ("127.0.0.1", 9808)),
        ("0.0.0.0:80", ("0.0.0.0", 80)),
        ("[::]:80", ("::", 80)),
        ("localhost:0", ("localhost", 0)),
    ],
)
def test_parse_listen(value, expected):
    assert parse_listen(value) == expected


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (":9808", "give a host"),
        ("::1:9808", "brackets"),
        ("[::1]", "brackets"),
        ("[]:80", "brackets"),
        ("localhost", "HOST:PORT"),
        ("localhost:", "port ''"),
        ("localhost:65536", "65536"),
        ("localhost:http", "'http'"),
    ],
)
def test_parse_listen_refuses(value, message):
    with pytest.raises(ValueError, match=message):
        parse_listen(value)


def test_parse_ports():
    assert parse_ports("8000,8001") == (8000, 8001)
    assert parse_ports(" 8000, 8001, ") == (8000, 8001)
    assert parse_ports("") is None
    for bad in ("0", "65536", "http", "80;81"):
        with pytest.raises(ValueError):
            parse_ports(bad)


# -- settings from flags and environment ----------------------------------------------------


def test_defaults_listen_on_loopback_only():
    assert settings_from(sidecar_args(), {}) == SidecarSettings(
        spool_dir=None,
        host="127.0.0.1",
        port=9808,
        poll_interval_s=0.5,
        threshold_s=0.05,
        listener_ports=None,
        log_format="json",
        monitor_factory=DEFAULT_MONITOR_FACTORY,
    )


ENVIRON = {
    "WSGIWATCH_DIR": "/env/spools",
    "WSGIWATCH_LISTEN": "[::1]:9900",
    "WSGIWATCH_POLL_INTERVAL": "0.25",
    "WSGIWATCH_THRESHOLD": "0.1",
    "WSGIWATCH_PORTS": "8000,8001",
    "WSGIWATCH_LOG_FORMAT": "console",
    "WSGIWATCH_MONITOR_FACTORY": FAKE,
}


def test_every_option_from_the_environment():
    assert settings_from(sidecar_args(), ENVIRON) == SidecarSettings(
        spool_dir="/env/spools",
        host="::1",
        port=9900,
        poll_interval_s=0.25,
        threshold_s=0.1,
        listener_ports=(8000, 8001),
        log_format="console",
        monitor_factory=FAKE,
    )


def test_flags_win_over_the_environment():
    args = sidecar_args(
        "--dir=/flag",
        "--listen=127.0.0.1:1",
        "--poll-interval=2",
        "--threshold=0",
        "--ports=9",
        "--log-format=json",
    )
    settings = settings_from(args, ENVIRON)
    assert (settings.spool_dir, settings.host, settings.port) == ("/flag", "127.0.0.1", 1)
    assert (settings.poll_interval_s, settings.threshold_s) == (2.0, 0.0)
    assert (settings.listener_ports, settings.log_format) == ((9,), "json")


def test_empty_environment_variable_means_unset():
    settings = settings_from(sidecar_args(), {"WSGIWATCH_LISTEN": "", "WSGIWATCH_DIR": ""})
    assert (settings.spool_dir, settings.host, settings.port) == (None, "127.0.0.1", 9808)


@pytest.mark.parametrize(
    ("environ", "argv", "message"),
    [
        ({"WSGIWATCH_POLL_INTERVAL": "soon"}, [], "WSGIWATCH_POLL_INTERVAL='soon'"),
        ({"WSGIWATCH_POLL_INTERVAL": "0"}, [], "above 0"),
        ({"WSGIWATCH_THRESHOLD": "-1"}, [], "WSGIWATCH_THRESHOLD='-1'"),
        ({"WSGIWATCH_THRESHOLD": "inf"}, [], "finite"),
        ({"WSGIWATCH_LISTEN": ":9808"}, [], "WSGIWATCH_LISTEN"),
        ({"WSGIWATCH_LOG_FORMAT": "xml"}, [], "json, console"),
        ({}, ["--ports", "x"], "--ports='x'"),
    ],
)
def test_bad_values_name_their_source(environ, argv, message):
    with pytest.raises(ConfigError, match=message):
        settings_from(sidecar_args(*argv), environ)


def test_main_reports_a_bad_environment_variable(monkeypatch, capsys):
    monkeypatch.setenv("WSGIWATCH_POLL_INTERVAL", "soon")
    assert main(["sidecar"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("wsgiwatch sidecar: error: WSGIWATCH_POLL_INTERVAL='soon'")


def test_main_without_a_command_prints_help(capsys):
    assert main([]) == 2
    assert "sidecar" in capsys.readouterr().err


def test_sidecar_help_names_the_environment_variables(capsys):
    with pytest.raises(SystemExit) as exited:
        main(["sidecar", "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    names = ("DIR", "LISTEN", "POLL_INTERVAL", "THRESHOLD", "PORTS", "STUCK_AFTER", "LOG_FORMAT")
    for name in names:
        assert f"[WSGIWATCH_{name}]" in out
    assert "monitor-factory" not in out  # for tests only


# -- building the monitor -------------------------------------------------------------------


def test_build_monitor_passes_the_settings():
    settings = SidecarSettings(
        poll_interval_s=0.2,
        threshold_s=0.125,
        listener_ports=(8000,),
        stuck_after_s=600.0,
        monitor_factory=FAKE,
    )
    monitor = build_monitor(settings, "/spools")
    assert isinstance(monitor, FakeMonitor)
    assert monitor.built_with == {
        "spool_dir": "/spools",
        "poll_interval_s": 0.2,
        "threshold_s": 0.125,
        "listener_ports": [8000],
        "stuck_after_s": 600.0,
    }


def test_default_factory_is_the_real_monitor():
    from wsgiwatch.sidecar.monitor import Monitor

    assert load_factory(DEFAULT_MONITOR_FACTORY) is Monitor


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("support.fake_monitor", "MODULE:CALLABLE"),
        ("no_such_module_here:X", "No module named"),
        ("support.fake_monitor:Missing", "Missing"),
        ("support.fake_monitor:INCIDENTS", "not callable"),
        ("support.fake_monitor:NotAMonitor", "without poll, collect, incidents, health"),
    ],
)
def test_bad_monitor_factories(spec, message):
    with pytest.raises(ConfigError, match=message):
        build_monitor(SidecarSettings(monitor_factory=spec), "/spools")


# -- logging ----------------------------------------------------------------------------------


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    logs._handler = None
    structlog.reset_defaults()


def test_configure_logging_json_for_structlog_and_stdlib(restore_logging):
    stream = io.StringIO()
    logs.configure_logging("json", stream=stream)
    logs.configure_logging("json", stream=stream)  # twice: still one line per event
    structlog.get_logger("wsgiwatch.sidecar").info("sidecar.started", url="http://x")
    logging.getLogger("wsgiwatch.kernel").warning("netlink said %s", "no")
    try:
        raise ValueError("boom")
    except ValueError:
        structlog.get_logger("wsgiwatch.sidecar").exception("sidecar.poll_failed")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 3
    started, stdlib, failed = lines
    assert started["event"] == "sidecar.started"
    assert started["url"] == "http://x"
    assert started["level"] == "info"
    assert started["logger"] == "wsgiwatch.sidecar"
    assert datetime.fromisoformat(started["timestamp"].replace("Z", "+00:00")).tzinfo
    assert stdlib["event"] == "netlink said no"
    assert stdlib["level"] == "warning"
    assert failed["exception"][0]["exc_type"] == "ValueError"


def test_configure_logging_console(restore_logging):
    stream = io.StringIO()
    logs.configure_logging("console", stream=stream)
    structlog.get_logger("wsgiwatch.sidecar").info("sidecar.started", url="http://x")
    out = stream.getvalue()
    assert "sidecar.started" in out
    assert "url=http://x" in out
    assert not out.startswith("{")
    with pytest.raises(ValueError):
        logs.configure_logging("xml")  # type: ignore[arg-type]


# -- the real command in a subprocess ---------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_sidecar_stops_cleanly_on_signal(tmp_path, signum):
    port = free_port()
    argv = ["sidecar", "--dir", str(tmp_path), "--listen", f"127.0.0.1:{port}"]
    with spawn([*argv, "--monitor-factory", FAKE, "--poll-interval", "0.1"]) as proc:
        wait_http(port, proc)
        status, body = get(port, "/metrics")
        assert status == 200
        assert b'wsgiwatch_hol_blocked_requests_total{blocker_route="/slow"} 3.0' in body
        proc.send_signal(signum)
        _, stderr = proc.communicate(timeout=5)
        assert proc.returncode == 0, stderr
    events = log_events(stderr)
    names = [e["event"] for e in events]
    assert names == ["sidecar.configured", "sidecar.started", "sidecar.stopping", "sidecar.stopped"]
    assert events[1]["url"] == f"http://127.0.0.1:{port}"
    assert events[2]["signal"] == signal.Signals(signum).name
    for event in events:
        assert datetime.fromisoformat(event["timestamp"].replace("Z", "+00:00")).tzinfo


def test_sidecar_configured_by_environment_only(tmp_path):
    port = free_port()
    env = {
        "WSGIWATCH_DIR": str(tmp_path),
        "WSGIWATCH_LISTEN": f"127.0.0.1:{port}",
        "WSGIWATCH_POLL_INTERVAL": "0.2",
        "WSGIWATCH_THRESHOLD": "0.125",
        "WSGIWATCH_PORTS": "8000,8001",
        "WSGIWATCH_STUCK_AFTER": "90",
        "WSGIWATCH_LOG_FORMAT": "console",
        "WSGIWATCH_MONITOR_FACTORY": FAKE,
    }
    with spawn(["sidecar"], env) as proc:
        wait_http(port, proc)
        status, body = get(port, "/healthz")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=5)
    assert status == 200
    assert json.loads(body)["built_with"] == {
        "spool_dir": str(tmp_path),
        "poll_interval_s": 0.2,
        "threshold_s": 0.125,
        "listener_ports": [8000, 8001],
        "stuck_after_s": 90.0,
    }
    assert proc.returncode == 0
    assert "sidecar.started" in stderr
    assert log_events(stderr) == []  # console format, not JSON


def test_sidecar_with_the_real_monitor(tmp_path):
    port = free_port()
    argv = ["sidecar", "--dir", str(tmp_path), "--listen", f"127.0.0.1:{port}"]
    with spawn([*argv, "--poll-interval", "0.1"]) as proc:
        wait_http(port, proc)
        status, body = get(port, "/metrics")
        health_status, _ = get(port, "/healthz")
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=5)
    assert status == 200, stderr
    assert b"wsgiwatch_sidecar_poll_duration_seconds" in body
    assert health_status == 200
    assert proc.returncode == 0, stderr


def test_sidecar_exits_1_when_the_port_is_taken(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["sidecar", "--dir", str(tmp_path), "--listen", f"127.0.0.1:{port}"]
        with spawn([*argv, "--monitor-factory", FAKE]) as proc:
            _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 1
    assert [e["event"] for e in log_events(stderr)] == ["sidecar.listen_failed"]


def test_sidecar_refuses_a_spool_dir_others_can_write(tmp_path):
    spools = tmp_path / "spools"
    spools.mkdir()
    spools.chmod(0o777)
    argv = ["sidecar", "--dir", str(spools), "--listen", "127.0.0.1:0"]
    with spawn([*argv, "--monitor-factory", FAKE]) as proc:
        _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 1
    (refused,) = log_events(stderr)
    assert refused["event"] == "sidecar.spool_dir_refused"
    assert "writable by other users" in refused["error"]


def test_sidecar_creates_a_missing_spool_dir_private(tmp_path):
    spools = tmp_path / "new"
    port = free_port()
    argv = ["sidecar", "--dir", str(spools), "--listen", f"127.0.0.1:{port}"]
    with spawn([*argv, "--monitor-factory", FAKE]) as proc:
        wait_http(port, proc)
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=5)
    assert proc.returncode == 0, stderr
    assert spools.stat().st_mode & 0o777 == 0o700
