"""WSGIWatch keeps PEP 3333's promises: timing to close(), close() passed through, file
wrappers untouched, write(), exc_info, every kind of response iterable, exceptions.

Each behaviour is checked in-process (werkzeug's test client, or a bare call) and on a real
gunicorn (a process on 127.0.0.1 and a free port, talked to with http.client or raw sockets),
reading the records back from the spool. Records appear when the server calls close(), which
may be a moment after the client has its response: the gunicorn tests poll the spool.
"""

from __future__ import annotations

import io
import os
import re
import socket
import threading
import time
import warnings
import wsgiref.util
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from wsgiref.handlers import SimpleHandler
from wsgiref.simple_server import WSGIRequestHandler, make_server
from wsgiref.validate import validator

import pytest
from apps import pep3333
from apps.pep3333 import (
    CLOSE_DELAY_S,
    KINDS_BODY,
    MARKS_KEY,
    STREAM_CHUNKS,
    STREAM_DELAY_S,
    AppError,
    raw_app,
)
from support.middleware_support import (
    SMALL,
    StartResponse,
    abort,
    all_records,
    call_app,
    environ_for,
    http_get,
    private_dir,
    raw_exchange,
    read_spools,
    record_keys,
    spool_bytes,
    wait_for,
    wait_new_records,
    wait_scoreboard_empty,
)
from support.servers import VENV_BIN, free_port, gunicorn, run_server, waitress
from werkzeug.test import Client

from wsgiwatch import WSGIWatch
from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.reader import Record

STREAMING_NS = int((STREAM_CHUNKS - 1) * STREAM_DELAY_S * 1e9)
TROUBLE = fmt.FLAG_APP_RAISED | fmt.FLAG_CLIENT_GONE | fmt.FLAG_NO_CLOSE_SEEN
FILE_BODY = bytes(range(256)) * 700  # 179200 bytes: more than one socket buffer


# --- fixtures ---------------------------------------------------------------------------------


@pytest.fixture
def watched(watch_dir: str, implementation: type[WSGIWatch]) -> WSGIWatch:
    return implementation(raw_app, spool_dir=watch_dir, **SMALL)


@pytest.fixture
def client(watched: WSGIWatch) -> Client:
    return Client(watched)


@pytest.fixture(scope="module")
def body_file(tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("body") / "body.bin"
    path.write_bytes(FILE_BODY)
    return str(path)


@dataclass
class Gunicorn:
    port: int
    spool_dir: str
    marks: str
    implementation: str  # "c" or "python"

    def request(self, path: str, **kwargs: Any) -> tuple[int, list[tuple[str, str]], bytes, Record]:
        """One HTTP request, and the one record it left in the spool."""
        seen = record_keys(self.spool_dir)
        status, headers, body = http_get(self.port, path, **kwargs)
        (record,) = wait_new_records(self.spool_dir, seen)
        return status, headers, body, record

    def raw(self, request: bytes) -> tuple[bytes, Record]:
        seen = record_keys(self.spool_dir)
        response = raw_exchange(self.port, request)
        (record,) = wait_new_records(self.spool_dir, seen)
        return response, record

    def marked(self, name: str) -> bool:
        return os.path.exists(os.path.join(self.marks, name))


@pytest.fixture(scope="module", params=["c", "python"])
def gunicorn_server(
    body_file: str, tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest
) -> Iterator[Gunicorn]:
    """One sync gunicorn worker serving apps.pep3333 for the whole module: once with the C
    accelerator, once with the pure-Python path."""
    marks = str(tmp_path_factory.mktemp("marks"))
    env = {pep3333.MARKS_ENV: marks, pep3333.FILE_ENV: body_file}
    if request.param == "python":
        env["WSGIWATCH_PURE_PYTHON"] = "1"
    with private_dir() as spool, gunicorn("apps.pep3333:application", spool, env=env) as srv:
        yield Gunicorn(srv.port, spool, marks, request.param)


def test_gunicorn_worker_records_with_the_implementation_asked_for(
    gunicorn_server: Gunicorn,
) -> None:
    status, _, _, record = gunicorn_server.request("/kinds/list1")
    assert status == 200 and record.status == 200
    (spool,) = read_spools(gunicorn_server.spool_dir)
    assert spool.header.accelerated == (gunicorn_server.implementation == "c")


def only_record(directory: str) -> Record:
    (record,) = all_records(directory)
    return record


def assert_timed(record: Record, at_least_ns: int) -> None:
    assert record.exit_ns - record.entry_ns >= at_least_ns, record
    assert record.entry_ns <= record.headers_ns <= record.exit_ns, record


# --- exit is taken at close() -----------------------------------------------------------------


def test_streamed_body_counts_until_close_werkzeug(client: Client, watch_dir: str) -> None:
    resp = client.get("/stream", buffered=True)
    assert resp.get_data() == b"".join(b"chunk %d\n" % i for i in range(STREAM_CHUNKS))
    record = only_record(watch_dir)
    assert_timed(record, STREAMING_NS)
    # start_response came first, long before the streaming ended
    assert record.headers_ns - record.entry_ns < STREAMING_NS
    assert record.bytes_sent == len(resp.get_data())
    assert record.status == 200 and record.flags & TROUBLE == 0


def test_exit_is_close_not_the_last_chunk(watched: WSGIWatch, watch_dir: str) -> None:
    sr = StartResponse()
    result = watched(environ_for("/stream"), sr)
    assert b"".join(result).startswith(b"chunk 0")
    time.sleep(0.2)
    assert all_records(watch_dir) == []  # iterated to the end, but not closed yet
    result.close()  # type: ignore[attr-defined]
    record = only_record(watch_dir)
    assert_timed(record, STREAMING_NS + 200_000_000)
    assert record.flags & TROUBLE == 0


def test_streamed_body_counts_until_close_gunicorn(gunicorn_server: Gunicorn) -> None:
    status, _, body, record = gunicorn_server.request("/stream")
    assert status == 200
    assert body == b"".join(b"chunk %d\n" % i for i in range(STREAM_CHUNKS))
    assert_timed(record, STREAMING_NS)
    assert record.headers_ns - record.entry_ns < STREAMING_NS
    assert record.bytes_sent == len(body)
    assert record.status == 200 and record.flags & TROUBLE == 0
    assert record.route == "/stream" and record.method == "GET" and record.peer == "127.0.0.1"


# --- close() is passed through ----------------------------------------------------------------


def test_close_passed_through_werkzeug(client: Client, watch_dir: str) -> None:
    marks: list[str] = []
    resp = client.get(
        "/kinds/tracked", query_string="t1", environ_overrides={MARKS_KEY: marks}, buffered=True
    )
    assert resp.get_data() == b"hello world"
    assert marks == ["t1"]
    assert only_record(watch_dir).flags & TROUBLE == 0


def test_close_passed_through_when_iteration_raises_werkzeug(
    client: Client, watch_dir: str
) -> None:
    marks: list[str] = []
    with pytest.raises(AppError, match="mid-iteration"):
        client.get(
            "/tracked-raise",
            query_string="t2",
            environ_overrides={MARKS_KEY: marks},
            buffered=True,
        )
    assert marks == ["t2"]
    record = only_record(watch_dir)
    assert record.flags & fmt.FLAG_APP_RAISED
    assert not record.flags & fmt.FLAG_CLIENT_GONE
    assert record.bytes_sent == len(b"first")


def test_close_passed_through_when_iteration_raises_in_process(
    watched: WSGIWatch, watch_dir: str
) -> None:
    marks: list[str] = []
    result = watched(environ_for("/tracked-raise", **{MARKS_KEY: marks}), StartResponse())
    iterator = iter(result)
    assert next(iterator) == b"first"
    with pytest.raises(AppError) as raised:
        next(iterator)
    assert marks == []
    result.close()  # type: ignore[attr-defined]
    assert marks == ["tracked"]
    assert str(raised.value) == "failed mid-iteration"
    assert only_record(watch_dir).flags & fmt.FLAG_APP_RAISED


def test_close_passed_through_gunicorn(gunicorn_server: Gunicorn) -> None:
    status, _, body, record = gunicorn_server.request("/kinds/tracked?g1")
    assert (status, body) == (200, b"hello world")
    assert gunicorn_server.marked("g1")
    assert record.flags & TROUBLE == 0


def test_close_passed_through_when_iteration_raises_gunicorn(gunicorn_server: Gunicorn) -> None:
    response, record = gunicorn_server.raw(
        b"GET /tracked-raise?g2 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert response.startswith(b"HTTP/1.1 200 ")
    assert b"first" in response and b"second" not in response
    assert gunicorn_server.marked("g2")
    assert record.flags & fmt.FLAG_APP_RAISED
    assert not record.flags & fmt.FLAG_CLIENT_GONE
    wait_scoreboard_empty(gunicorn_server.spool_dir)


def test_close_passed_through_when_iter_raises_in_process(
    watched: WSGIWatch, watch_dir: str
) -> None:
    marks: list[str] = []
    result = watched(environ_for("/iter-raises", **{MARKS_KEY: marks}), StartResponse())
    with pytest.raises(AppError, match="__iter__"):
        iter(result)
    result.close()  # type: ignore[attr-defined]
    assert marks == ["tracked"]
    record = only_record(watch_dir)
    assert record.flags & fmt.FLAG_APP_RAISED, "the app's iterable raised"
    assert not record.flags & fmt.FLAG_CLIENT_GONE, "the client did not go anywhere"


def test_close_passed_through_when_iter_raises_gunicorn(gunicorn_server: Gunicorn) -> None:
    status, _, _, record = gunicorn_server.request("/iter-raises?g5")
    assert status == 500
    assert gunicorn_server.marked("g5")
    assert record.flags & fmt.FLAG_APP_RAISED
    assert not record.flags & fmt.FLAG_CLIENT_GONE


# --- wsgi.file_wrapper ------------------------------------------------------------------------


@pytest.mark.usefixtures("implementation")
def test_file_wrapper_handed_back_untouched_in_process(watch_dir: str, body_file: str) -> None:
    returned: list[Any] = []

    def app(environ: dict[str, Any], start_response: Any) -> Any:
        result = raw_app(environ, start_response)
        returned.append(result)
        return result

    marks: list[str] = []
    environ = environ_for(
        "/file",
        **{"wsgi.file_wrapper": wsgiref.util.FileWrapper, "test.file": body_file, MARKS_KEY: marks},
    )
    mw = WSGIWatch(app, spool_dir=watch_dir, **SMALL)
    result = mw(environ, StartResponse())
    assert result is returned[0]
    assert type(result) is wsgiref.util.FileWrapper
    assert b"".join(result) == FILE_BODY
    time.sleep(0.1)
    assert all_records(watch_dir) == []  # not closed yet
    result.close()  # type: ignore[attr-defined]
    assert marks == ["file"]
    record = only_record(watch_dir)
    assert record.flags & fmt.FLAG_FILE_WRAPPER
    assert record.flags & TROUBLE == 0
    assert_timed(record, 100_000_000 + int(CLOSE_DELAY_S * 1e9))


def test_file_wrapper_werkzeug(client: Client, watch_dir: str, body_file: str) -> None:
    marks: list[str] = []
    resp = client.get(
        "/file",
        environ_overrides={
            "wsgi.file_wrapper": wsgiref.util.FileWrapper,
            "test.file": body_file,
            MARKS_KEY: marks,
        },
        buffered=True,
    )
    assert resp.get_data() == FILE_BODY
    assert marks == ["file"]
    record = only_record(watch_dir)
    assert record.flags & fmt.FLAG_FILE_WRAPPER
    assert_timed(record, int(CLOSE_DELAY_S * 1e9))


def test_file_wrapper_gunicorn(gunicorn_server: Gunicorn) -> None:
    status, headers, body, record = gunicorn_server.request("/file?g3")
    assert status == 200 and body == FILE_BODY
    assert ("Content-Length", str(len(FILE_BODY))) in headers
    assert gunicorn_server.marked("g3")
    assert record.flags & fmt.FLAG_FILE_WRAPPER
    assert record.flags & TROUBLE == 0
    assert record.status == 200
    assert_timed(record, int(CLOSE_DELAY_S * 1e9))  # exit at the file's close()


def test_file_wrapper_uses_sendfile_on_gunicorn(body_file: str, tmp_path: Path) -> None:
    """Under strace: the worker sends the body with sendfile(2), not with send()."""
    trace = tmp_path / "strace.out"
    port = free_port()
    argv = [
        "strace",
        "-f",
        "-qq",
        "-e",
        "trace=sendfile",
        "-o",
        str(trace),
        os.path.join(VENV_BIN, "gunicorn"),
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        "1",
        "--log-level",
        "warning",
        "apps.pep3333:application",
    ]
    env = {pep3333.FILE_ENV: body_file}
    with private_dir() as spool, run_server(argv, port, spool, env=env):
        status, _, body = http_get(port, "/file")
        assert status == 200 and body == FILE_BODY
        (record,) = wait_for("the record", lambda: all_records(spool))
        assert record.flags & fmt.FLAG_FILE_WRAPPER
        assert_timed(record, int(CLOSE_DELAY_S * 1e9))
    # "sendfile(9, 10, [0] => [179200], 179200) = 179200", or split into an unfinished
    # call and a "<... sendfile resumed>" line; a big file may take several calls.
    text = trace.read_text()
    sent = sum(int(n) for n in re.findall(r"sendfile.*\)\s+=\s+(\d+)\s*$", text, re.MULTILINE))
    assert sent == len(FILE_BODY), text


# --- the write() callable ---------------------------------------------------------------------

WRITE_CASES = [
    ("/write", b"written twice, then returned"),
    ("/write-generator", b"written, then yielded"),
]


@pytest.mark.parametrize(("path", "expected"), WRITE_CASES)
def test_write_callable_werkzeug(
    client: Client, watch_dir: str, path: str, expected: bytes
) -> None:
    # Not buffered: werkzeug's buffered mode drops what went through write().
    resp = client.get(path)
    try:
        assert resp.get_data() == expected
    finally:
        resp.close()
    record = only_record(watch_dir)
    assert record.bytes_sent == len(expected)
    assert record.flags & TROUBLE == 0


@pytest.mark.parametrize(("path", "expected"), WRITE_CASES)
def test_write_callable_gunicorn(gunicorn_server: Gunicorn, path: str, expected: bytes) -> None:
    status, _, body, record = gunicorn_server.request(path)
    assert (status, body) == (200, expected)
    assert record.bytes_sent == len(expected)
    assert record.flags & TROUBLE == 0


# --- exc_info ---------------------------------------------------------------------------------


def run_wsgiref(app: Any, path: str) -> tuple[bytes, str]:
    """Serve one request with wsgiref's own PEP 3333 handler: (raw output, error log)."""
    environ = environ_for(path)
    out, err = io.BytesIO(), io.StringIO()
    handler = SimpleHandler(io.BytesIO(), out, err, environ, multithread=False)
    handler.server_software = "wsgiref-test"
    handler.run(app)
    return out.getvalue(), err.getvalue()


def test_exc_info_before_headers_sent_wsgiref(watched: WSGIWatch, watch_dir: str) -> None:
    plain, _ = run_wsgiref(raw_app, "/exc-before")
    output, errors = run_wsgiref(watched, "/exc-before")
    assert output.startswith(b"HTTP/1.0 500 Internal Server Error\r\n")
    assert output.endswith(b"\r\n\r\nerror page")
    assert errors == ""
    assert _without_date(output) == _without_date(plain)
    record = only_record(watch_dir)
    assert record.status == 500
    assert record.flags & TROUBLE == 0
    assert record.bytes_sent == len(b"error page")


def test_exc_info_after_headers_sent_wsgiref(watched: WSGIWatch, watch_dir: str) -> None:
    plain, _ = run_wsgiref(raw_app, "/exc-after")
    output, errors = run_wsgiref(watched, "/exc-after")
    assert output.startswith(b"HTTP/1.0 200 OK\r\n")
    assert output.endswith(b"partial")
    assert "failed after the headers were sent" in errors  # the re-raise reached the server
    assert _without_date(output) == _without_date(plain)
    record = only_record(watch_dir)
    assert record.flags & fmt.FLAG_APP_RAISED
    assert record.status == 200  # what the client got: the 500 was refused


def _without_date(output: bytes) -> bytes:
    return b"\r\n".join(
        line for line in output.split(b"\r\n") if not line.lower().startswith(b"date:")
    )


@pytest.mark.parametrize("path", ["/exc-before", "/exc-after"])
def test_exc_info_werkzeug_same_as_without(client: Client, watch_dir: str, path: str) -> None:
    # werkzeug's test client re-raises any exc_info it is given: it must still do so, with
    # the app's own exception, when WSGIWatch stands in between.
    with pytest.raises(AppError) as plain:
        Client(raw_app).get(path, buffered=True)
    with pytest.raises(AppError) as watched:
        client.get(path, buffered=True)
    assert str(watched.value) == str(plain.value)
    assert only_record(watch_dir).flags & fmt.FLAG_APP_RAISED


def test_exc_info_before_headers_sent_gunicorn(gunicorn_server: Gunicorn) -> None:
    status, _, body, record = gunicorn_server.request("/exc-before")
    assert (status, body) == (500, b"error page")
    assert record.status == 500
    assert record.flags & TROUBLE == 0


def test_exc_info_after_headers_sent_gunicorn(gunicorn_server: Gunicorn) -> None:
    response, record = gunicorn_server.raw(
        b"GET /exc-after HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    assert response.startswith(b"HTTP/1.1 200 ")
    assert b"partial" in response and b"never sent" not in response
    assert b"500" not in response.split(b"\r\n", 1)[1]
    assert record.flags & fmt.FLAG_APP_RAISED
    assert record.status == 200
    wait_scoreboard_empty(gunicorn_server.spool_dir)


# --- every kind of response iterable ----------------------------------------------------------

KINDS = sorted(KINDS_BODY)
CLOSEABLE = {"tracked", "empty-tracked"}


@pytest.mark.parametrize("kind", KINDS)
def test_response_kinds_werkzeug(client: Client, watch_dir: str, kind: str) -> None:
    marks: list[str] = []
    resp = client.get(f"/kinds/{kind}", environ_overrides={MARKS_KEY: marks}, buffered=True)
    assert resp.status_code == 200
    assert resp.get_data() == KINDS_BODY[kind]
    assert marks == (["tracked"] if kind in CLOSEABLE else [])
    record = only_record(watch_dir)
    assert record.bytes_sent == len(KINDS_BODY[kind])
    assert record.status == 200 and record.flags & TROUBLE == 0
    assert record.route == f"/kinds/{kind}"


@pytest.mark.parametrize("kind", KINDS)
def test_response_kinds_in_process(watched: WSGIWatch, watch_dir: str, kind: str) -> None:
    marks: list[str] = []
    status, _, body = call_app(watched, environ_for(f"/kinds/{kind}", **{MARKS_KEY: marks}))
    assert (status, body) == ("200 OK", KINDS_BODY[kind])
    assert marks == (["tracked"] if kind in CLOSEABLE else [])
    record = only_record(watch_dir)
    assert record.bytes_sent == len(KINDS_BODY[kind])
    assert record.flags & TROUBLE == 0


@pytest.mark.parametrize("kind", KINDS)
def test_response_kinds_gunicorn(gunicorn_server: Gunicorn, kind: str) -> None:
    name = f"kind-{kind}"
    status, _, body, record = gunicorn_server.request(f"/kinds/{kind}?{name}")
    assert (status, body) == (200, KINDS_BODY[kind])
    assert gunicorn_server.marked(name) == (kind in CLOSEABLE)
    assert record.bytes_sent == len(KINDS_BODY[kind])
    assert record.status == 200 and record.flags & TROUBLE == 0


def test_start_response_at_first_iteration_werkzeug(client: Client, watch_dir: str) -> None:
    resp = client.get("/lazy-start", buffered=True)
    assert (resp.status_code, resp.get_data()) == (201, b"created")
    record = only_record(watch_dir)
    assert record.status == 201 and record.flags & TROUBLE == 0
    assert_timed(record, int(STREAM_DELAY_S * 1e9))
    assert record.headers_ns - record.entry_ns >= int(STREAM_DELAY_S * 1e9)


def test_start_response_at_first_iteration_gunicorn(gunicorn_server: Gunicorn) -> None:
    status, _, body, record = gunicorn_server.request("/lazy-start")
    assert (status, body) == (201, b"created")
    assert record.status == 201 and record.flags & TROUBLE == 0
    assert record.headers_ns - record.entry_ns >= int(STREAM_DELAY_S * 1e9)
    assert record.headers_ns <= record.exit_ns


# --- the app raises ---------------------------------------------------------------------------


def _raising_app(when: str, error: BaseException) -> Any:
    def app(environ: dict[str, Any], start_response: Any) -> Any:
        if when == "after":
            start_response("200 OK", [])
        raise error

    return app


@pytest.mark.usefixtures("implementation")
@pytest.mark.parametrize("when", ["before", "after"])
def test_app_exception_propagates_unchanged_in_process(watch_dir: str, when: str) -> None:
    error = AppError(when)
    mw = WSGIWatch(_raising_app(when, error), spool_dir=watch_dir, **SMALL)
    with pytest.raises(AppError) as raised:
        mw(environ_for("/boom"), StartResponse())
    assert raised.value is error
    (spool,) = read_spools(watch_dir)
    (record,) = spool.records
    assert record.flags & fmt.FLAG_APP_RAISED
    assert record.status == (200 if when == "after" else 0)
    assert spool.busy == []


@pytest.mark.usefixtures("implementation")
@pytest.mark.parametrize("when", ["before", "after"])
def test_app_exception_propagates_unchanged_werkzeug(watch_dir: str, when: str) -> None:
    error = AppError(when)
    mw = WSGIWatch(_raising_app(when, error), spool_dir=watch_dir, **SMALL)
    with pytest.raises(AppError) as raised:
        Client(mw).get("/boom")
    assert raised.value is error
    (spool,) = read_spools(watch_dir)
    assert [r.flags & fmt.FLAG_APP_RAISED for r in spool.records] == [fmt.FLAG_APP_RAISED]
    assert spool.busy == []


@pytest.mark.usefixtures("implementation")
def test_base_exceptions_propagate_too(watch_dir: str) -> None:
    error = KeyboardInterrupt()
    mw = WSGIWatch(_raising_app("before", error), spool_dir=watch_dir, **SMALL)
    with pytest.raises(KeyboardInterrupt) as raised:
        mw(environ_for("/boom"), StartResponse())
    assert raised.value is error
    (spool,) = read_spools(watch_dir)
    assert spool.records[0].flags & fmt.FLAG_APP_RAISED and spool.busy == []


@pytest.mark.parametrize("path", ["/raise-before", "/raise-after"])
def test_app_exception_reaches_gunicorn(gunicorn_server: Gunicorn, path: str) -> None:
    status, _, _, record = gunicorn_server.request(path)
    assert status == 500  # gunicorn's own error page: the exception got to it
    assert record.flags & fmt.FLAG_APP_RAISED
    assert record.route == path
    wait_scoreboard_empty(gunicorn_server.spool_dir)


# --- the client goes away ---------------------------------------------------------------------


def test_client_gone_mid_stream_gunicorn(gunicorn_server: Gunicorn) -> None:
    seen = record_keys(gunicorn_server.spool_dir)
    sock = socket.create_connection(("127.0.0.1", gunicorn_server.port), timeout=10)
    try:
        sock.sendall(b"GET /long?gone HTTP/1.1\r\nHost: x\r\n\r\n")
        received = b""
        while len(received) < 2 * len(pep3333.LONG_CHUNK):
            data = sock.recv(4096)
            assert data, "the server closed first"
            received += data
        assert received.startswith(b"HTTP/1.1 200 ")
    finally:
        abort(sock)
    (record,) = wait_new_records(gunicorn_server.spool_dir, seen)
    assert record.flags & fmt.FLAG_CLIENT_GONE
    assert not record.flags & fmt.FLAG_APP_RAISED
    assert record.bytes_sent < pep3333.LONG_CHUNKS * len(pep3333.LONG_CHUNK)
    assert gunicorn_server.marked("gone")  # close() reached the app's iterable
    wait_scoreboard_empty(gunicorn_server.spool_dir)


def test_client_gone_werkzeug(client: Client, watch_dir: str) -> None:
    marks: list[str] = []
    resp = client.get("/long", query_string="w", environ_overrides={MARKS_KEY: marks})
    assert next(iter(resp.response)) == pep3333.LONG_CHUNK
    resp.close()
    assert marks == ["w"]
    (spool,) = read_spools(watch_dir)
    assert spool.records[0].flags & fmt.FLAG_CLIENT_GONE
    assert spool.busy == []


# --- waitress's Content-Length ----------------------------------------------------------------


def test_waitress_headers_same_with_and_without(spool_dir: str) -> None:
    with waitress("apps.pep3333:compare_app", spool_dir) as srv:
        for kind in ("list1", "tuple1", "list2", "tuple2", "generator", "tracked", "empty-list"):
            raw = http_get(srv.port, f"/raw/kinds/{kind}")
            seen = record_keys(spool_dir)
            watched = http_get(srv.port, f"/watched/kinds/{kind}")
            (record,) = wait_new_records(spool_dir, seen)
            assert watched[0] == raw[0] == 200
            assert watched[2] == raw[2] == KINDS_BODY[kind]
            assert _no_date(watched[1]) == _no_date(raw[1]), kind
            assert record.route == f"/watched/kinds/{kind}"
            assert record.bytes_sent == len(KINDS_BODY[kind])
        # one chunk in a list or tuple: waitress computes Content-Length from len() == 1
        for kind in ("list1", "tuple1"):
            _, headers, _ = http_get(srv.port, f"/watched/kinds/{kind}")
            assert ("Content-Length", "11") in headers, headers


def _no_date(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers if k.lower() != "date"]


# --- wsgiref.validate -------------------------------------------------------------------------

VALIDATED_PATHS = ["/stream", "/kinds/list1", "/kinds/tracked", "/kinds/empty-generator", "/write"]


@pytest.mark.usefixtures("implementation")
@pytest.mark.parametrize("path", VALIDATED_PATHS)
def test_validator_inside_and_outside_werkzeug(watch_dir: str, path: str) -> None:
    app = validator(WSGIWatch(validator(raw_app), spool_dir=watch_dir, **SMALL))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        resp = Client(app).get(path, query_string="a=1", buffered=True)
        resp.close()
    assert caught == []
    assert resp.status_code == 200
    assert [r.flags & TROUBLE for r in all_records(watch_dir)] == [0]


@pytest.mark.usefixtures("implementation")
def test_validator_inside_and_outside_wsgiref_server(watch_dir: str) -> None:
    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    app = validator(WSGIWatch(validator(raw_app), spool_dir=watch_dir, **SMALL))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with make_server("127.0.0.1", 0, app, handler_class=Quiet) as server:
            port = server.server_address[1]
            thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
            thread.start()
            try:
                for path in VALIDATED_PATHS:
                    status, _, body = http_get(port, path + "?a=1")
                    assert status == 200, (path, body)
            finally:
                server.shutdown()
                thread.join(5)
    assert caught == []
    records = all_records(watch_dir)
    assert [r.route for r in records] == VALIDATED_PATHS
    assert all(r.status == 200 and r.flags & TROUBLE == 0 for r in records)


# --- nothing private reaches the spool --------------------------------------------------------

SECRETS = {
    "query": "qsSECRET4f1c9",
    "header": "hdrSECRET8e2b7",
    "cookie": "ckSECRET3a9d1",
    "body": "bodySECRET7c5e2",
}


def _assert_no_secret(directory: str) -> None:
    data = spool_bytes(directory)
    assert data
    for where, secret in SECRETS.items():
        for encoded in (secret.encode(), secret.encode("utf-16-le")):
            assert encoded not in data, f"the {where} secret is in the spool"


def test_secrets_never_reach_the_spool_werkzeug(client: Client, watch_dir: str) -> None:
    resp = client.post(
        "/echo",
        query_string=f"token={SECRETS['query']}",
        headers={
            "Authorization": f"Bearer {SECRETS['header']}",
            "Cookie": f"s={SECRETS['cookie']}",
        },
        data=SECRETS["body"].encode(),
        buffered=True,
    )
    assert resp.get_data() == b"got %d bytes" % len(SECRETS["body"])
    assert only_record(watch_dir).route == "/echo"
    _assert_no_secret(watch_dir)


def test_secrets_never_reach_the_spool_gunicorn(gunicorn_server: Gunicorn) -> None:
    status, _, body, record = gunicorn_server.request(
        f"/echo?token={SECRETS['query']}",
        method="POST",
        headers={
            "Authorization": f"Bearer {SECRETS['header']}",
            "Cookie": f"s={SECRETS['cookie']}",
        },
        body=SECRETS["body"].encode(),
    )
    assert (status, body) == (200, b"got %d bytes" % len(SECRETS["body"]))
    assert record.route == "/echo" and record.method == "POST"
    _assert_no_secret(gunicorn_server.spool_dir)
