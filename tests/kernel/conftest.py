"""A known set of real sockets, for the live tests (fixture ``facts``) and the fixture recorder.

Facts are taken from the sockets themselves (``getsockname``, ``os.fstat(...).st_ino``, what
we sent), never from the parser under test. Every wait is on an event (``select``), not a
sleep.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

V4_BACKLOG = 8
V6_BACKLOG = 4
UNIX_BACKLOG = 5
V4_UNREAD = b"hello"  # sent by the v4 client, left unread in the accepted socket
V4_REPLY = b"abc"  # sent by the v4 server end, left unread in the client
V6_UNREAD = b"hello world"
UNIX_UNREAD = b"unix!!!"


def wait_readable(sock: socket.socket, timeout: float = 10.0) -> None:
    readable, _, _ = select.select([sock], [], [], timeout)
    if not readable:
        raise TimeoutError(f"{sock!r} did not become readable in {timeout} s")


def inode(sock: socket.socket) -> int:
    return os.fstat(sock.fileno()).st_ino


def _tcp(stack: contextlib.ExitStack, family: int, host: str, backlog: int) -> dict[str, Any]:
    """Listener, one accepted connection with unread bytes both ways, one still in the backlog."""
    unread = V4_UNREAD if family == socket.AF_INET else V6_UNREAD
    listener = stack.enter_context(socket.create_server((host, 0), family=family, backlog=backlog))
    port = listener.getsockname()[1]
    client = stack.enter_context(socket.create_connection((host, port)))
    server_end, _ = listener.accept()
    stack.enter_context(server_end)
    client.sendall(unread)
    wait_readable(server_end)  # one loopback segment: readable means all of it arrived
    server_end.sendall(V4_REPLY)
    wait_readable(client)
    pending = stack.enter_context(socket.create_connection((host, port)))
    wait_readable(listener)  # the accept queue holds exactly the pending connection now
    return {
        "listener_port": port,
        "listener_inode": inode(listener),
        "backlog_limit": backlog,
        "backlog_len": 1,
        "accepted_inode": inode(server_end),
        "client_port": client.getsockname()[1],
        "client_inode": inode(client),
        "unread": len(unread),
        "client_unread": len(V4_REPLY),
        "pending_client_port": pending.getsockname()[1],
        "pending_client_inode": inode(pending),
    }


def _unix(stack: contextlib.ExitStack, path: str) -> dict[str, Any]:
    """Unix listener, one accepted connection with unread bytes, one still in the backlog.

    Unix connect() and send() complete synchronously: no wait is needed.
    """
    listener = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    listener.bind(path)
    listener.listen(UNIX_BACKLOG)
    client = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    client.connect(path)
    server_end, _ = listener.accept()
    stack.enter_context(server_end)
    client.sendall(UNIX_UNREAD)
    pending = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
    pending.connect(path)
    return {
        "path": path,
        "listener_inode": inode(listener),
        "backlog_limit": UNIX_BACKLOG,
        "backlog_len": 1,
        "accepted_inode": inode(server_end),
        "client_inode": inode(client),
        "unread": len(UNIX_UNREAD),
        "pending_client_inode": inode(pending),
    }


@contextlib.contextmanager
def scenario() -> Iterator[dict[str, dict[str, Any]]]:
    """Open the sockets; yield their facts by group ("v4", "v6", "unix", "abstract")."""
    with contextlib.ExitStack() as stack:
        tmp = stack.enter_context(tempfile.TemporaryDirectory(prefix="wsgiwatch-kernel-"))
        facts = {
            "v4": _tcp(stack, socket.AF_INET, "127.0.0.1", V4_BACKLOG),
            "v6": _tcp(stack, socket.AF_INET6, "::1", V6_BACKLOG),
            "unix": _unix(stack, os.path.join(tmp, "app.sock")),
        }
        abstract = stack.enter_context(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
        name = f"wsgiwatch-test-{os.getpid()}-{id(abstract)}"
        abstract.bind("\0" + name)
        abstract.listen(3)
        facts["abstract"] = {"path": "@" + name, "listener_inode": inode(abstract)}
        yield facts


@pytest.fixture
def facts() -> Iterator[dict[str, dict[str, Any]]]:
    """The scenario's sockets, open for the test; their facts by group."""
    with scenario() as f:
        yield f
