"""Watching responses that are not a list or tuple: a server's file wrapper is handed back
untouched (so sendfile still works) and watched through its ``close()``; any other iterable
is iterated through a :class:`Stream` that counts bytes, sees the end and passes ``close()``
through. Both paths use this (the C path calls :func:`wrap_other`)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any, Protocol

from wsgiwatch.spool import layout as fmt
from wsgiwatch.worker.call_state import EXHAUSTED

Environ = dict[str, Any]


class Response(Protocol):
    """What a stream or file wrapper needs of its request: the Python ``Call`` or the
    accelerator's."""

    flags: int
    bytes_sent: int

    def finish(self) -> None: ...


def wrap_other(call: Response, environ: Environ, result: Iterable[bytes]) -> Iterable[bytes]:
    """Any response but a list or tuple: a server's file wrapper is handed back as it is
    (watched through its close()), anything else iterated through a Stream."""
    wrapper = environ.get("wsgi.file_wrapper")
    if wrapper is not None and (
        type(result) is wrapper
        if isinstance(wrapper, type)
        # A file_wrapper that is a function (uWSGI's) gives the file itself back, and the
        # server sends it with sendfile only when the app returns that very object.
        else hasattr(result, "fileno") or hasattr(result, "read")
    ):
        return wrap_file(call, result)  # type: ignore[no-any-return]
    return Stream(call, result)


def wrap_file(call: Response, result: Any) -> Any:
    """The server must see its own file wrapper to use sendfile, so we hand it back and
    watch its close() through an attribute of that one object instead."""
    call.flags |= fmt.FLAG_FILE_WRAPPER
    original = getattr(result, "close", None)

    def close() -> None:
        try:
            if original is not None:
                original()
        except BaseException:
            call.flags |= fmt.FLAG_APP_RAISED
            raise
        finally:
            call.finish()

    try:
        result.close = close
    except (AttributeError, TypeError):
        call.flags |= fmt.FLAG_NO_CLOSE_SEEN
        call.finish()
    return result


class Stream:
    """The response iterable for anything but a list or tuple: counts bytes, sees the end,
    and passes ``close()`` through to the app's iterable."""

    __slots__ = ("call", "iterator", "result")

    def __init__(self, call: Response, result: Iterable[bytes]) -> None:
        self.call = call
        self.result: Iterable[bytes] | None = result
        self.iterator: Iterator[bytes] | None = None

    def __iter__(self) -> Iterator[bytes]:
        try:
            self.iterator = iter(self.result)  # type: ignore[arg-type]
        except BaseException:
            self.call.flags |= fmt.FLAG_APP_RAISED
            raise
        return self

    def __next__(self) -> bytes:
        try:
            chunk: bytes = next(self.iterator)  # type: ignore[arg-type]
        except StopIteration:
            self.call.flags |= EXHAUSTED
            raise
        except BaseException:
            self.call.flags |= fmt.FLAG_APP_RAISED
            raise
        self.call.bytes_sent += len(chunk)
        return chunk

    def close(self) -> None:
        call = self.call
        try:
            close = getattr(self.result, "close", None)
            if close is not None:
                close()
        except BaseException:
            call.flags |= fmt.FLAG_APP_RAISED
            raise
        finally:
            if not call.flags & (EXHAUSTED | fmt.FLAG_APP_RAISED):
                call.flags |= fmt.FLAG_CLIENT_GONE
            call.finish()
            self.result = self.iterator = None  # drop the app's objects early
