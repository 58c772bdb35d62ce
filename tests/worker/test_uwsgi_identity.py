"""The connection's own peer port, read for uWSGI only while the sidecar asks (spool header
``identity_until``): both paths read the same word and store the same record, and reading
never disturbs uWSGI's socket. Real sockets; ``uwsgi`` itself is a stand-in module here
(only uWSGI's embedded interpreter has the real one: tests/e2e/test_uwsgi.py runs it)."""

from __future__ import annotations

import os
import socket
import sys
import time
import types
from collections.abc import Iterator
from typing import Any

import pytest
from support.middleware_support import SMALL, StartResponse, all_records, environ_for, forget_spool

from wsgiwatch import WSGIWatch
from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.reader import SpoolReader, list_spools
from wsgiwatch.worker import middleware
from wsgiwatch.worker.uwsgi_identity import NO_PORT, connection_port


class FakeUwsgi(types.ModuleType):
    """What the worker calls of uWSGI's module: ``connection_fd()``, counted."""

    def __init__(self) -> None:
        super().__init__("uwsgi")
        self.fd = -1
        self.calls = 0

    def connection_fd(self) -> int:
        self.calls += 1
        if self.fd < 0:
            raise OSError("not in a request")
        return self.fd


@pytest.fixture
def tcp_pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    """(client, accepted server side) of one real TCP connection on 127.0.0.1."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    with client, server:
        yield client, server


@pytest.fixture
def fake_uwsgi(monkeypatch: pytest.MonkeyPatch) -> FakeUwsgi:
    module = FakeUwsgi()
    monkeypatch.setitem(sys.modules, "uwsgi", module)
    return module


def _later() -> int:
    return time.monotonic_ns() + 10_000_000_000


def test_reads_the_connections_own_peer_port(
    fake_uwsgi: FakeUwsgi, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    client, server = tcp_pair
    fake_uwsgi.fd = server.fileno()
    blocking = server.getblocking()
    assert connection_port(_later()) == client.getsockname()[1]
    # uWSGI's socket is as it was: open, same fd, same blocking mode.
    assert server.fileno() == fake_uwsgi.fd and server.getblocking() == blocking
    assert server.getpeername() == client.getsockname()


def test_reads_nothing_once_the_sidecars_deadline_has_passed(
    fake_uwsgi: FakeUwsgi, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    fake_uwsgi.fd = tcp_pair[1].fileno()
    assert connection_port(time.monotonic_ns() - 1) == NO_PORT
    assert fake_uwsgi.calls == 0


def test_no_port_outside_uwsgi_for_unix_sockets_and_on_errors(
    fake_uwsgi: FakeUwsgi, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert connection_port(_later()) == NO_PORT  # connection_fd() raised
    left, right = socket.socketpair()
    with left, right:
        fake_uwsgi.fd = left.fileno()
        assert connection_port(_later()) == NO_PORT  # a unix socket: found by inode instead
    fake_uwsgi.fd = os.open(os.devnull, os.O_RDONLY)  # not a socket
    try:
        assert connection_port(_later()) == NO_PORT
    finally:
        os.close(fake_uwsgi.fd)
    monkeypatch.delitem(sys.modules, "uwsgi")
    assert connection_port(_later()) == NO_PORT  # not under uWSGI


def test_leaves_the_socket_alone_when_a_default_timeout_would_change_it(
    fake_uwsgi: FakeUwsgi, tcp_pair: tuple[socket.socket, socket.socket]
) -> None:
    server = tcp_pair[1]
    fake_uwsgi.fd = server.fileno()
    server.setblocking(True)
    socket.setdefaulttimeout(5.0)
    try:
        assert connection_port(_later()) == NO_PORT
    finally:
        socket.setdefaulttimeout(None)
    assert server.getblocking()


def _hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hi"]


def _serve(watched: Any, **extra: Any) -> None:
    environ = environ_for("/hello", **extra)
    environ.pop("REMOTE_PORT", None)  # as uWSGI's --http-socket
    environ.update(extra)
    result = watched(environ, StartResponse())
    list(result)
    if hasattr(result, "close"):  # after an internal error the app's own list comes back
        result.close()


def _ask(directory: str, until_ns: int) -> None:
    (path,) = list_spools(directory)
    with SpoolReader(path) as reader:
        reader.ask_identity(until_ns)


@pytest.mark.parametrize("cls", [WSGIWatch, middleware.PythonWSGIWatch])
def test_both_paths_store_the_port_only_while_asked(
    cls: type,
    fake_uwsgi: FakeUwsgi,
    tcp_pair: tuple[socket.socket, socket.socket],
    tmp_path: Any,
) -> None:
    client, server = tcp_pair
    own_port = client.getsockname()[1]
    fake_uwsgi.fd = server.fileno()
    directory = str(tmp_path)
    os.chmod(directory, 0o700)
    watched = cls(_hello, spool_dir=directory, **SMALL)
    try:
        _serve(watched)  # not asked: nothing read
        assert fake_uwsgi.calls == 0
        _ask(directory, _later())
        _serve(watched)  # asked: the connection's own port
        _serve(watched, REMOTE_PORT="18124")  # a router's REMOTE_PORT: the client's, not ours
        _ask(directory, time.monotonic_ns() - 1)  # lapsed: nothing read
        _serve(watched)
        calls_while_lapsed = fake_uwsgi.calls
        _ask(directory, 0)  # cleared
        _serve(watched)
        records = all_records(directory)
    finally:
        forget_spool(directory)
    assert calls_while_lapsed == fake_uwsgi.calls == 2
    assert [(r.peer_port, r.flags & fmt.FLAG_PEER_FROM_SOCKET) for r in records] == [
        (0, 0),
        (own_port, fmt.FLAG_PEER_FROM_SOCKET),
        (own_port, fmt.FLAG_PEER_FROM_SOCKET),
        (0, 0),
        (0, 0),
    ]


def test_an_error_reading_the_port_is_counted_and_the_app_still_runs(
    fake_uwsgi: FakeUwsgi, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The C path: a connection_port that raises (a broken install) costs the record, not
    the request."""
    from wsgiwatch.worker import bridge, internal_errors, uwsgi_identity

    def broken(until_ns: int) -> int:
        raise RuntimeError("broken")

    directory = str(tmp_path)
    os.chmod(directory, 0o700)
    watched = WSGIWatch(_hello, spool_dir=directory, **SMALL)
    monkeypatch.setattr(uwsgi_identity, "connection_port", broken)
    monkeypatch.setattr(internal_errors, "logged", [])  # logged once per process: here
    bridge.share_with_accelerator()
    try:
        _serve(watched)
        _ask(directory, _later())
        _serve(watched)
        (path,) = list_spools(directory)
        with SpoolReader(path, track=False) as reader:
            errors = reader.header().write_errors
        records = all_records(directory)
    finally:
        monkeypatch.undo()
        bridge.share_with_accelerator()
        forget_spool(directory)
    assert len(records) == 1 and errors == 1
