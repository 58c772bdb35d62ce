"""Helpers for the middleware tests: reading spools back, polling for records, HTTP clients."""

from __future__ import annotations

import contextlib
import http.client
import os
import socket
import struct
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from wsgiwatch.spool.reader import (
    Record,
    SlotState,
    SpoolFormatError,
    SpoolHeader,
    SpoolReader,
    list_spools,
)
from wsgiwatch.worker import bridge, process_spool, settings

#: Small geometry for in-process spools, so dozens of tests do not pin megabytes of /dev/shm.
SMALL = {"slots": 8, "ring_size": 64, "accept_events": 8}
POLL_TIMEOUT_S = 10.0


@dataclass
class Spool:
    path: str
    header: SpoolHeader
    records: list[Record]
    busy: list[SlotState]


def read_spools(directory: str) -> list[Spool]:
    """Every spool in ``directory``, read from its oldest record (track=False)."""
    out = []
    for path in list_spools(directory):
        try:
            reader = SpoolReader(path, track=False)
        except SpoolFormatError:
            continue  # still being created: the magic is written last
        with reader:
            out.append(
                Spool(path, reader.header(), reader.read_records().records, reader.scoreboard())
            )
    return out


def all_records(directory: str) -> list[Record]:
    return [r for spool in read_spools(directory) for r in spool.records]


def record_keys(directory: str) -> set[tuple[int, int]]:
    return {(r.pid, r.seq) for r in all_records(directory)}


def wait_for(what: str, check: Callable[[], Any], timeout: float = POLL_TIMEOUT_S) -> Any:
    """Poll ``check`` until it returns something truthy (bounded), and return that."""
    deadline = time.monotonic() + timeout
    delay = 0.002
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)


def wait_new_records(directory: str, seen: set[tuple[int, int]], count: int = 1) -> list[Record]:
    """The records not in ``seen``, once there are ``count`` of them (records appear when the
    server calls close(), which may be a little after the client has its response)."""

    def new() -> list[Record] | None:
        found = [r for r in all_records(directory) if (r.pid, r.seq) not in seen]
        return found if len(found) >= count else None

    found: list[Record] = wait_for(f"{count} new record(s) in {directory}", new)
    assert len(found) == count, found
    return found


def wait_scoreboard_empty(directory: str) -> None:
    def empty() -> bool:
        return all(not spool.busy for spool in read_spools(directory))

    wait_for("an empty scoreboard", empty)


def spool_bytes(directory: str) -> bytes:
    data = b""
    for path in list_spools(directory):
        with open(path, "rb") as f:
            data += f.read()
    return data


def forget_spool(directory: str) -> None:
    """Close this process's writer for ``directory`` and drop it from the module caches."""
    settings.ready.pop(directory, None)
    writer = process_spool._writers.pop(directory, None)
    if writer is not None:
        writer.close()


@contextlib.contextmanager
def swapped(module: ModuleType, **internals: Any) -> Iterator[None]:
    """Swap internals of a ``wsgiwatch.worker`` module (to break them) for both
    implementations: the C path is handed the swapped ones too, and the originals again
    afterwards."""
    saved = {name: getattr(module, name) for name in internals}
    for name, value in internals.items():
        setattr(module, name, value)
    bridge.share_with_accelerator()
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(module, name, value)
        bridge.share_with_accelerator()


@contextlib.contextmanager
def private_dir() -> Iterator[str]:
    """A fresh private spool directory for a module-scoped server."""
    with tempfile.TemporaryDirectory(
        prefix="wsgiwatch-test-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
    ) as d:
        os.chmod(d, 0o700)
        yield d


# --- in-process calls -----------------------------------------------------------------------


def environ_for(path: str = "/", **extra: Any) -> dict[str, Any]:
    from werkzeug.test import EnvironBuilder

    builder = EnvironBuilder(path=path)
    try:
        env = builder.get_environ()
    finally:
        builder.close()
    env.update(REMOTE_ADDR="127.0.0.1", REMOTE_PORT="40000")
    env.update(extra)
    return env


class StartResponse:
    """A minimal server-side start_response: remembers what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[tuple[str, str]], Any]] = []
        self.written: list[bytes] = []
        self.headers_sent = False

    def __call__(
        self, status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if exc_info is not None and self.headers_sent:
            raise exc_info[1].with_traceback(exc_info[2])
        self.calls.append((status, headers, exc_info))
        return self.write

    def write(self, data: bytes) -> None:
        self.headers_sent = True
        self.written.append(data)


def call_app(app: Any, environ: dict[str, Any]) -> tuple[str, list[tuple[str, str]], bytes]:
    """Run one request like a server: call, iterate, close. Returns status, headers, body."""
    sr = StartResponse()
    result = app(environ, sr)
    try:
        for chunk in result:
            if chunk:
                sr.write(chunk)
        body = b"".join(sr.written)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status, headers, _ = sr.calls[-1]
    return status, headers, body


# --- HTTP clients -----------------------------------------------------------------------------


def http_get(
    port: int,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    timeout: float = 10.0,
) -> tuple[int, list[tuple[str, str]], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        data = resp.read()
        return resp.status, resp.getheaders(), data
    finally:
        conn.close()


def raw_exchange(port: int, request: bytes, timeout: float = 10.0) -> bytes:
    """Send ``request`` and read until the server closes the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(request)
        chunks = []
        while True:
            try:
                data = s.recv(65536)
            except ConnectionResetError:
                break
            if not data:
                break
            chunks.append(data)
    return b"".join(chunks)


def abort(sock: socket.socket) -> None:
    """Close with a RST (SO_LINGER 0), like a client that gave up."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()
