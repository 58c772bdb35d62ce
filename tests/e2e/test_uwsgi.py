"""uWSGI, a server that hands the response to C code: records, close() and the response
kinds, through its own HTTP parser in forked workers.

uWSGI iterates the response with ``PyObject_GetIter`` and calls ``close()`` when there is
one, so WSGIWatch's list-subclass response (the C accelerator's request object) must be
iterated, sized and closed like any list there. Its ``wsgi.file_wrapper`` is a function
that hands the file back, and it uses sendfile only when the app returns that very object.

uWSGI 2.0's HTTP parser puts no ``REMOTE_PORT`` and no ``SERVER_SOFTWARE`` in the environ:
records carry peer port 0, and the server is named from ``uwsgi.version``.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from apps.pep3333 import FILE_ENV, KINDS_BODY
from support.middleware_support import (
    http_get,
    private_dir,
    read_spools,
    record_keys,
    wait_new_records,
    wait_scoreboard_empty,
)
from support.servers import Server, uwsgi

from wsgiwatch.spool import layout as fmt

TROUBLE = fmt.FLAG_APP_RAISED | fmt.FLAG_CLIENT_GONE | fmt.FLAG_NO_CLOSE_SEEN


FILE_BODY = bytes(range(256)) * 300


@pytest.fixture(scope="module")
def body_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("uwsgi-file") / "body.bin"
    path.write_bytes(FILE_BODY)
    return str(path)


@pytest.fixture(scope="module", params=["c", "python"])
def server(request: pytest.FixtureRequest, body_file: str) -> Iterator[Server]:
    """Two uWSGI workers serving apps.pep3333, with the C path and with the Python one."""
    env = {FILE_ENV: body_file}
    if request.param == "python":
        env["WSGIWATCH_PURE_PYTHON"] = "1"
    with (
        private_dir() as spool,
        uwsgi("apps.pep3333:application", spool, processes=2, env=env) as srv,
    ):
        yield srv


def _get_from(port: int, path: str) -> tuple[int, bytes, int]:
    """One request on a connection whose local port we know: (status, body, local port)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        local_port = sock.getsockname()[1]
        sock.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body, local_port


@pytest.mark.parametrize("kind", sorted(KINDS_BODY))
def test_each_response_kind_is_recorded_whole_and_closed(server: Server, kind: str) -> None:
    seen = record_keys(server.spool_dir)
    status, body, local_port = _get_from(server.port, f"/kinds/{kind}")
    assert (status, body) == (200, KINDS_BODY[kind])
    (record,) = wait_new_records(server.spool_dir, seen)
    assert record.route == f"/kinds/{kind}"
    assert record.status == 200 and record.flags & TROUBLE == 0
    assert record.bytes_sent == len(KINDS_BODY[kind])
    assert record.peer == "127.0.0.1" and local_port > 0
    assert record.peer_port == 0  # uWSGI 2.0 does not say (no REMOTE_PORT)
    assert record.method == "GET" and record.server_port == server.port
    assert record.entry_ns <= record.headers_ns <= record.exit_ns
    wait_scoreboard_empty(server.spool_dir)


def test_streamed_and_written_bodies_count_until_close(server: Server) -> None:
    for path in ("/stream", "/write"):
        seen = record_keys(server.spool_dir)
        status, _, body = http_get(server.port, path)
        assert status == 200
        (record,) = wait_new_records(server.spool_dir, seen)
        assert record.bytes_sent == len(body) > 0, path
        assert record.flags & TROUBLE == 0, path
    wait_scoreboard_empty(server.spool_dir)


def test_each_forked_worker_writes_its_own_spool(
    server: Server, request: pytest.FixtureRequest
) -> None:
    seen = record_keys(server.spool_dir)
    for i in range(40):
        assert http_get(server.port, f"/kinds/list1?{i}")[0] == 200
    records = wait_new_records(server.spool_dir, seen, count=40)
    spools = read_spools(server.spool_dir)
    by_pid = {s.header.pid: s for s in spools}
    assert {r.pid for r in records} <= set(by_pid)
    # The app was built in the master, which serves nothing: only workers have spools.
    assert server.proc.pid not in by_pid
    for spool in spools:
        assert spool.header.server_software.startswith("uWSGI/2.")
        # the C path when it is built, the Python one when asked for: the worker says which
        assert spool.header.accelerated == (request.node.callspec.params["server"] == "c")
        assert spool.header.write_errors == 0 and spool.header.slots_exhausted == 0


def test_file_wrapper_is_handed_back_for_sendfile(server: Server) -> None:
    seen = record_keys(server.spool_dir)
    status, body, _ = _get_from(server.port, "/file")
    assert (status, body) == (200, FILE_BODY)
    (record,) = wait_new_records(server.spool_dir, seen)
    assert record.flags & fmt.FLAG_FILE_WRAPPER
    assert record.flags & TROUBLE == 0  # its close() was seen: the exit is the real one
    assert record.exit_ns - record.entry_ns >= 0.25e9  # the test file's close() is slow
    wait_scoreboard_empty(server.spool_dir)


def test_file_wrapper_keeps_sendfile(body_file: str, tmp_path: Path) -> None:
    """Under strace: the worker sends the body with sendfile(2), as it does without us."""
    trace = tmp_path / "strace.out"
    strace = ["strace", "-f", "-qq", "-e", "trace=sendfile", "-o", str(trace)]
    env = {FILE_ENV: body_file}
    with (
        private_dir() as spool,
        uwsgi("apps.pep3333:application", spool, env=env, under=strace) as srv,
    ):
        seen = record_keys(spool)
        status, body, _ = _get_from(srv.port, "/file")
        assert (status, body) == (200, FILE_BODY)
        (record,) = wait_new_records(spool, seen)
        assert record.flags & fmt.FLAG_FILE_WRAPPER
    # "sendfile(9, 10, [0] => [76800], 76800) = 76800", or split into an unfinished call
    # and a "<... sendfile resumed>" line; a big file may take several calls.
    text = trace.read_text()
    sent = sum(int(n) for n in re.findall(r"sendfile.*\)\s+=\s+(\d+)\s*$", text, re.MULTILINE))
    assert sent == len(FILE_BODY), text
