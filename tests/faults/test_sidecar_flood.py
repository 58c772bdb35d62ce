"""Connection floods and slow clients against a real ``wsgiwatch sidecar`` process: it keeps
answering ``/metrics`` within a second, its threads and memory stay bounded, and once the
flood ends its connections, threads and file descriptors come back to where they were.

Before: 1,000 partial requests held, then closed, made 1,004 threads, kept ``/metrics``
from answering for 20 to 35 s and left 745 MB of 830 MB never returned.
"""

from __future__ import annotations

import os
import socket
import time
import urllib.request

from support.hol_scenario import wait_until
from support.servers import sidecar

FLOOD = 1000


def _status_field(pid: int, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def _scrape_s(port: int) -> float:
    began = time.monotonic()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        assert reply.status == 200
        assert b"wsgiwatch_workers" in reply.read()
    return time.monotonic() - began


def test_a_flood_of_partial_requests_and_slow_clients(spool_dir: str) -> None:
    server, port = sidecar(spool_dir)
    with server as sc:
        pid = sc.proc.pid
        _scrape_s(port)
        threads, rss, fds = _status_field(pid, "Threads"), _status_field(pid, "VmRSS"), _fds(pid)
        flood: list[socket.socket] = []
        try:
            for n in range(FLOOD):
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                # Half of them a partial request, half a request sent a byte at a time.
                s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n" if n % 2 else b"G")
                flood.append(s)
            scrapes = [_scrape_s(port) for _ in range(5)]
            assert max(scrapes) < 1.0, scrapes
            assert _status_field(pid, "Threads") <= threads + 2
            assert _status_field(pid, "VmRSS") < rss + 30_000  # kB
            assert _fds(pid) <= fds + 256 + 2  # the connection cap
        finally:
            for s in flood:
                s.close()
        wait_until(lambda: _fds(pid) <= fds + 1, timeout=10, what="connections closed")
        assert _status_field(pid, "Threads") <= threads + 2
        assert _scrape_s(port) < 1.0
        assert sc.proc.poll() is None
