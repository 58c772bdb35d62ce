"""Requests against a real server, each matched to the record its worker wrote."""

from __future__ import annotations

import http.client
from dataclasses import dataclass

from apps.spools import collect, wait_for_spool
from support.servers import Server

from wsgiwatch.spool.reader import Record, SpoolReader


@dataclass(frozen=True)
class Served:
    method: str
    path: str
    status: int  # what the client got
    record: Record  # what the worker wrote


def request(port: int, method: str, path: str) -> tuple[int, int]:
    """(status, client port) of one request on a fresh connection, body read."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15)
    try:
        conn.connect()
        assert conn.sock is not None
        local_port = int(conn.sock.getsockname()[1])
        conn.request(method, path)
        response = conn.getresponse()
        response.read()
        return response.status, local_port
    finally:
        conn.close()


def serve_all(server: Server, requests: list[tuple[str, str]]) -> dict[tuple[str, str], Served]:
    """Send ``(method, path)`` requests one by one; the served requests by (method, path)."""
    sent = [(method, path, *request(server.port, method, path)) for method, path in requests]
    with SpoolReader(wait_for_spool(server.spool_dir), track=False) as reader:
        records = {r.peer_port: r for r in collect(reader, len(sent))}
    return {
        (method, path): Served(method, path, status, records[port])
        for method, path, status, port in sent
    }
