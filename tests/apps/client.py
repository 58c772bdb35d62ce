"""A small HTTP client for the server tests that also says *when*, on CLOCK_MONOTONIC.

CLOCK_MONOTONIC is one clock for every process here, so the times a client takes can be
compared with the times a worker wrote into its spool, directly.
"""

from __future__ import annotations

import http.client
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes
    local_port: int  # the client's port: the record's peer_port
    start_ns: int  # before connect (fresh connection) or before sending (kept-alive one)
    done_ns: int  # after the last byte of the body was read

    @property
    def latency_ns(self) -> int:
        return self.done_ns - self.start_ns

    @property
    def pid(self) -> int:
        """The worker that served it (apps.probe answers ``"<pid> <ppid>"``)."""
        return int(self.body.split()[0])


class Connection:
    """One kept-alive HTTP/1.1 connection to 127.0.0.1:port; a context manager."""

    def __init__(self, port: int, timeout: float = 15.0) -> None:
        self._conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.local_port = 0

    def connect(self) -> None:
        self._conn.connect()
        assert self._conn.sock is not None
        self.local_port = self._conn.sock.getsockname()[1]

    def get(self, path: str, *, start_ns: int | None = None) -> Reply:
        start = time.monotonic_ns() if start_ns is None else start_ns
        if self._conn.sock is None:
            self.connect()
        self._conn.request("GET", path)
        response = self._conn.getresponse()
        try:
            body = response.read()
            done = time.monotonic_ns()
        finally:
            response.close()
        return Reply(response.status, body, self.local_port, start, done)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def fetch(port: int, path: str, timeout: float = 15.0) -> Reply:
    """GET on a fresh connection, timed from before the connect."""
    start = time.monotonic_ns()
    with Connection(port, timeout) as conn:
        conn.connect()
        return conn.get(path, start_ns=start)
