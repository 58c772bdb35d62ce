"""Apps for the PEP 3333 and "never hurt the app" tests, in-process and on real servers.

``raw_app`` dispatches on ``PATH_INFO`` to one behaviour per route; ``application`` is it
wrapped in WSGIWatch (spool dir from ``$WSGIWATCH_DIR``). On a real server, an app that wants
to say "my iterable's close() was called" touches a file named after the query string in
``$WSGIWATCH_TEST_MARKS``; in-process tests pass ``marks`` (a list) in the environ instead.
``compare_app`` serves every route twice, under ``/raw`` and ``/watched``, to compare a
server's responses with and without the middleware.
"""

from __future__ import annotations

import io
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from wsgiwatch import WSGIWatch

Environ = dict[str, Any]
StartResponse = Callable[..., Any]

MARKS_ENV = "WSGIWATCH_TEST_MARKS"
FILE_ENV = "WSGIWATCH_TEST_FILE"
#: The environ key an in-process test sets to a list that collects close() marks.
MARKS_KEY = "test.marks"

STREAM_CHUNKS = 5
STREAM_DELAY_S = 0.06
CLOSE_DELAY_S = 0.3
LONG_CHUNKS = 500  # at most LONG_CHUNKS * LONG_DELAY_S = 5 s, however the client behaves
LONG_DELAY_S = 0.01
LONG_CHUNK = b"x" * 1024


def text() -> list[tuple[str, str]]:
    """Fresh headers each time: servers may add to the list they are given (wsgiref does)."""
    return [("Content-Type", "text/plain")]


class AppError(RuntimeError):
    """What the test apps raise on purpose."""


def mark(environ: Environ, name: str) -> None:
    """Note that something happened (close() was called), where the test can see it."""
    marks = environ.get(MARKS_KEY)
    if isinstance(marks, list):
        marks.append(name)
    directory = os.environ.get(MARKS_ENV)
    if directory and name:
        with open(os.path.join(directory, name), "w"):
            pass


class Tracked:
    """A custom response iterable (not a generator) whose close() is recorded."""

    def __init__(
        self,
        environ: Environ,
        chunks: Iterable[bytes],
        *,
        fail_at: int | None = None,
        delay: float = 0.0,
    ) -> None:
        self.environ = environ
        self.name = str(environ.get("QUERY_STRING") or "tracked")
        self.chunks = list(chunks)
        self.fail_at = fail_at
        self.delay = delay
        self.index = 0
        self.closed = False

    def __iter__(self) -> Iterator[bytes]:
        return self

    def __next__(self) -> bytes:
        if self.index == self.fail_at:
            raise AppError("failed mid-iteration")
        if self.index >= len(self.chunks):
            raise StopIteration
        if self.delay and self.index:
            time.sleep(self.delay)
        self.index += 1
        return self.chunks[self.index - 1]

    def close(self) -> None:
        self.closed = True
        mark(self.environ, self.name)


class Plain:
    """A custom response iterable without close()."""

    def __init__(self, chunks: Iterable[bytes]) -> None:
        self.chunks = list(chunks)

    def __iter__(self) -> Iterator[bytes]:
        return iter(self.chunks)


class IterRaises(Tracked):
    """A custom iterable whose ``__iter__`` itself raises (its close() is still due)."""

    def __iter__(self) -> Iterator[bytes]:
        raise AppError("failed in __iter__")


class SlowCloseFile(io.FileIO):
    """A real file (so a server can sendfile it) whose close() takes CLOSE_DELAY_S."""

    environ: Environ | None = None

    def close(self) -> None:
        if not self.closed:
            time.sleep(CLOSE_DELAY_S)
            if self.environ is not None:
                mark(self.environ, str(self.environ.get("QUERY_STRING") or "file"))
        super().close()


def _stream(environ: Environ) -> Iterator[bytes]:
    for i in range(STREAM_CHUNKS):
        if i:
            time.sleep(STREAM_DELAY_S)
        yield b"chunk %d\n" % i


def _generator(chunks: list[bytes]) -> Iterator[bytes]:
    yield from chunks


def _kinds(kind: str, environ: Environ) -> Iterable[bytes]:
    two = [b"hello ", b"world"]
    kinds: dict[str, Callable[[], Iterable[bytes]]] = {
        "list1": lambda: [b"hello world"],
        "list2": lambda: list(two),
        "tuple1": lambda: (b"hello world",),
        "tuple2": lambda: tuple(two),
        "generator": lambda: _generator(two),
        "tracked": lambda: Tracked(environ, two),
        "plain": lambda: Plain(two),
        "empty-list": lambda: [],
        "empty-tuple": lambda: (),
        "empty-bytes": lambda: [b""],
        "empty-generator": lambda: _generator([]),
        "empty-tracked": lambda: Tracked(environ, []),
        "empty-plain": lambda: Plain([]),
    }
    return kinds[kind]()


KINDS_BODY = {
    "list1": b"hello world",
    "list2": b"hello world",
    "tuple1": b"hello world",
    "tuple2": b"hello world",
    "generator": b"hello world",
    "tracked": b"hello world",
    "plain": b"hello world",
    "empty-list": b"",
    "empty-tuple": b"",
    "empty-bytes": b"",
    "empty-generator": b"",
    "empty-tracked": b"",
    "empty-plain": b"",
}


def _exc_after(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", text())
    yield b"partial"
    try:
        raise AppError("failed after the headers were sent")
    except AppError:
        # PEP 3333: headers are out, so this start_response re-raises the error.
        start_response("500 Internal Server Error", text(), sys.exc_info())
    yield b"never sent"


def _lazy_start(start_response: StartResponse) -> Iterator[bytes]:
    # PEP 3333 lets an app call start_response as late as its first iteration.
    time.sleep(STREAM_DELAY_S)
    start_response("201 Created", text())
    yield b"created"


def raw_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path == "/stream":
        start_response("200 OK", text())
        return _stream(environ)
    if path.startswith("/kinds/"):
        start_response("200 OK", text())
        return _kinds(path[len("/kinds/") :], environ)
    if path == "/tracked-raise":
        start_response("200 OK", text())
        return Tracked(environ, [b"first", b"second"], fail_at=1)
    if path == "/iter-raises":
        start_response("200 OK", text())
        return IterRaises(environ, [b"never"])
    if path == "/lazy-start":
        return _lazy_start(start_response)
    if path == "/file":
        name = environ.get("test.file") or os.environ[FILE_ENV]
        size = os.path.getsize(name)
        start_response("200 OK", [*text(), ("Content-Length", str(size))])
        f = SlowCloseFile(name, "r")
        f.environ = environ
        wrapper = environ["wsgi.file_wrapper"]
        return wrapper(f)  # type: ignore[no-any-return]
    if path == "/write":
        write = start_response("200 OK", text())
        write(b"written ")
        write(b"twice, ")
        return [b"then ", b"returned"]
    if path == "/write-generator":
        write = start_response("200 OK", text())
        write(b"written, ")
        return _generator([b"then ", b"yielded"])
    if path == "/exc-before":
        start_response("200 OK", text())
        try:
            raise AppError("failed before the headers were sent")
        except AppError:
            start_response("500 Internal Server Error", text(), sys.exc_info())
        return [b"error page"]
    if path == "/exc-after":
        return _exc_after(environ, start_response)
    if path == "/raise-before":
        raise AppError("raised before start_response")
    if path == "/raise-after":
        start_response("200 OK", text())
        raise AppError("raised after start_response")
    if path == "/long":
        start_response("200 OK", text())
        return Tracked(environ, [LONG_CHUNK] * LONG_CHUNKS, delay=LONG_DELAY_S)
    if path == "/echo":
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        start_response("200 OK", text())
        return [b"got %d bytes" % len(body)]
    start_response("404 Not Found", text())
    return [b"not found"]


application = WSGIWatch(raw_app)


def compare_app(environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
    """``/raw/...`` without the middleware, ``/watched/...`` through it."""
    path = environ.get("PATH_INFO", "")
    for prefix, app in (("/raw", raw_app), ("/watched", application)):
        if path.startswith(prefix + "/"):
            environ["PATH_INFO"] = path[len(prefix) :]
            environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + prefix
            return app(environ, start_response)
    start_response("404 Not Found", text())
    return [b"not found"]
