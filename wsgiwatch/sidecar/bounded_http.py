"""A small HTTP/1.1 server for the sidecar's few GET routes, that a flood cannot starve.

A thread per connection (werkzeug's and http.server's threaded servers) lets anyone who can
connect exhaust the sidecar: 1,000 partial requests once made 1,004 threads, held 830 MB and
kept ``/metrics`` from answering for 20 to 35 s. Here one thread multiplexes every
connection with ``selectors`` and does only non-blocking I/O; a request is handed to a small
fixed pool of threads only once it has fully arrived, and the pool hands back bytes that the
I/O thread writes out. So:

- threads are bounded: one I/O thread plus ``workers``;
- connections are bounded: past ``max_connections`` the least recently active connection
  that is not being answered is closed (a newcomer, such as Prometheus, is always served;
  refusing newcomers instead would let a flood lock scrapes out);
- memory is bounded: a request may hold at most ``max_request_bytes`` (headers only; the
  sidecar takes no bodies) and each connection one response;
- time is bounded: a request must arrive whole within ``header_timeout_s`` of its first
  byte (slowloris), an idle kept-alive connection is closed after ``idle_timeout_s``, and a
  client that does not read its response within ``write_timeout_s`` is dropped.

Bad requests get the codes http.server gives: 400 (malformed), 414 (request line too long),
431 (header block too large), 505 (not HTTP/1.x); they close the connection.
"""

from __future__ import annotations

import collections
import io
import selectors
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import unquote_to_bytes

import structlog

log = structlog.get_logger("wsgiwatch.sidecar")

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]

MAX_REQUEST_LINE = 8190
MAX_HEADERS = 100
_REASONS = {400: "Bad Request", 414: "URI Too Long", 431: "Request Header Fields Too Large"}
_REASONS[505] = "HTTP Version Not Supported"

_READING, _ANSWERING, _WRITING = "reading", "answering", "writing"


class _Conn:
    __slots__ = ("addr", "buf", "close_after", "deadline", "out", "sock", "state")

    def __init__(self, sock: socket.socket, addr: Any, deadline: float) -> None:
        self.sock = sock
        self.addr = addr
        self.buf = bytearray()
        self.out = b""
        self.state = _READING
        self.deadline = deadline  # monotonic time by which this connection must progress
        self.close_after = False


class _BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class BoundedHTTPServer:
    """Serves ``app`` (a WSGI callable) on an already bound, listening ``listener``."""

    def __init__(
        self,
        listener: socket.socket,
        app: WSGIApp,
        *,
        max_connections: int = 256,
        workers: int = 2,
        header_timeout_s: float = 5.0,
        idle_timeout_s: float = 30.0,
        write_timeout_s: float = 10.0,
        max_request_bytes: int = 16384,
    ) -> None:
        self.socket = listener
        self.app = app
        self.max_connections = max_connections
        self.header_timeout_s = header_timeout_s
        self.idle_timeout_s = idle_timeout_s
        self.write_timeout_s = write_timeout_s
        self.max_request_bytes = max_request_bytes
        self.server_name, self.server_port = listener.getsockname()[:2]
        listener.setblocking(False)
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wsgiwatch-http")
        self._selector = selectors.DefaultSelector()
        # Insertion order = least recently active first (moved to the end on activity).
        self._conns: collections.OrderedDict[socket.socket, _Conn] = collections.OrderedDict()
        self._done: collections.deque[tuple[_Conn, bytes, bool]] = collections.deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._stop = threading.Event()
        self._stopped = threading.Event()
        self._stopped.set()
        #: Connections closed because the limit was reached, or because they timed out.
        self.evicted = 0
        self.timed_out = 0

    @property
    def connections(self) -> int:
        return len(self._conns)

    # -- the I/O thread --------------------------------------------------------------------
    def serve_forever(self, poll_interval: float = 0.1) -> None:
        self._stopped.clear()
        sel = self._selector
        sel.register(self.socket, selectors.EVENT_READ, "listener")
        sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        try:
            while not self._stop.is_set():
                for key, events in sel.select(poll_interval):
                    if key.data == "listener":
                        self._accept()
                    elif key.data == "wake":
                        self._drain_wake()
                    else:
                        conn = self._conns.get(key.fileobj)  # type: ignore[call-overload]
                        if conn is None:
                            continue
                        if events & selectors.EVENT_READ:
                            self._on_readable(conn)
                        if events & selectors.EVENT_WRITE and conn.sock in self._conns:
                            self._flush(conn)
                self._finish_answers()
                self._expire(time.monotonic())
        finally:
            for conn in list(self._conns.values()):
                self._close(conn)
            sel.unregister(self.socket)
            sel.unregister(self._wake_r)
            self._stopped.set()

    def shutdown(self) -> None:
        """Stop :meth:`serve_forever` and wait until it has returned."""
        self._stop.set()
        self._wake()
        self._stopped.wait()

    def server_close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()
        self.socket.close()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # already awake (the buffer is full), or closing

    def _drain_wake(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except (BlockingIOError, OSError):
            pass

    def _accept(self) -> None:
        while True:
            try:
                sock, addr = self.socket.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # EMFILE and the like: try again at the next tick
                log.warning("sidecar.accept_failed", error=str(exc))
                return
            sock.setblocking(False)
            if len(self._conns) >= self.max_connections:
                self._evict_one()
            conn = _Conn(sock, addr, time.monotonic() + self.header_timeout_s)
            self._conns[sock] = conn
            self._selector.register(sock, selectors.EVENT_READ, "conn")

    def _evict_one(self) -> None:
        for conn in self._conns.values():  # least recently active first
            if conn.state != _ANSWERING:
                self.evicted += 1
                self._close(conn)
                return

    def _touch(self, conn: _Conn) -> None:
        self._conns.move_to_end(conn.sock)

    def _close(self, conn: _Conn) -> None:
        if self._conns.pop(conn.sock, None) is None:
            return
        try:
            self._selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()

    def _expire(self, now: float) -> None:
        expired = [c for c in self._conns.values() if c.state != _ANSWERING and c.deadline < now]
        for conn in expired:
            self.timed_out += 1
            self._close(conn)

    def _on_readable(self, conn: _Conn) -> None:
        try:
            data = conn.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self._close(conn)
            return
        if conn.state != _READING:
            # A pipelined request while one is answered: keep it for later, bounded.
            if len(conn.buf) + len(data) > self.max_request_bytes:
                self._close(conn)
            else:
                conn.buf += data
            return
        if not conn.buf:  # the first byte of a request starts its clock
            conn.deadline = time.monotonic() + self.header_timeout_s
        conn.buf += data
        self._touch(conn)
        self._try_request(conn)

    def _try_request(self, conn: _Conn) -> None:
        end = conn.buf.find(b"\r\n\r\n")
        if end < 0:
            line_end = conn.buf.find(b"\n")
            if line_end < 0 and len(conn.buf) > MAX_REQUEST_LINE:
                self._reject(conn, 414, "request line too long")
            elif len(conn.buf) > self.max_request_bytes:
                self._reject(conn, 431, "request headers too large")
            return
        if end > self.max_request_bytes:
            self._reject(conn, 431, "request headers too large")
            return
        head = bytes(conn.buf[:end])
        del conn.buf[: end + 4]
        try:
            environ, keep_alive = self._environ(conn, head)
        except _BadRequest as exc:
            self._reject(conn, exc.status, str(exc))
            return
        conn.state = _ANSWERING
        conn.close_after = not keep_alive
        self._pool.submit(self._answer, conn, environ)

    def _reject(self, conn: _Conn, status: int, message: str) -> None:
        body = f"{status} {_REASONS[status]}: {message}\n".encode()
        conn.buf.clear()
        self._respond(conn, _response(f"{status} {_REASONS[status]}", [], body, True), True)

    # -- requests --------------------------------------------------------------------------
    def _environ(self, conn: _Conn, head: bytes) -> tuple[dict[str, Any], bool]:
        lines = head.split(b"\r\n")
        request_line = lines[0]
        if len(request_line) > MAX_REQUEST_LINE:
            raise _BadRequest(414, "request line too long")
        parts = request_line.split(b" ")
        if len(parts) != 3 or not parts[0] or not parts[1]:
            raise _BadRequest(400, f"malformed request line {request_line[:80]!r}")
        method, target, version = (p.decode("latin-1") for p in parts)
        if not version.startswith("HTTP/1."):
            if version.startswith("HTTP/"):
                raise _BadRequest(505, f"{version} is not served here")
            raise _BadRequest(400, f"malformed request line {request_line[:80]!r}")
        if len(lines) - 1 > MAX_HEADERS:
            raise _BadRequest(431, f"more than {MAX_HEADERS} headers")
        headers: dict[str, str] = {}
        for raw in lines[1:]:
            name, sep, value = raw.partition(b":")
            if not sep or not name or name != name.strip() or b" " in name:
                raise _BadRequest(400, f"malformed header line {raw[:80]!r}")
            key = name.decode("latin-1").upper().replace("-", "_")
            text = value.strip().decode("latin-1")
            headers[key] = f"{headers[key]},{text}" if key in headers else text
        path, _, query = target.partition("?")
        environ: dict[str, Any] = {
            "REQUEST_METHOD": method,
            "SCRIPT_NAME": "",
            "PATH_INFO": unquote_to_bytes(path).decode("latin-1"),
            "QUERY_STRING": query,
            "SERVER_NAME": str(self.server_name),
            "SERVER_PORT": str(self.server_port),
            "SERVER_PROTOCOL": version,
            "REMOTE_ADDR": str(conn.addr[0]) if isinstance(conn.addr, tuple) else "",
            "REMOTE_PORT": str(conn.addr[1]) if isinstance(conn.addr, tuple) else "",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.input": io.BytesIO(b""),
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": True,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }
        for key, text in headers.items():
            if key in ("CONTENT_TYPE", "CONTENT_LENGTH"):
                environ[key] = text
            else:
                environ[f"HTTP_{key}"] = text
        connection = headers.get("CONNECTION", "").lower()
        keep_alive = version == "HTTP/1.1" and "close" not in connection
        # No bodies are taken here: one announced means the connection cannot be reused.
        if headers.get("CONTENT_LENGTH", "0") not in ("", "0") or "TRANSFER_ENCODING" in headers:
            keep_alive = False
        return environ, keep_alive

    def _answer(self, conn: _Conn, environ: dict[str, Any]) -> None:
        """In a pool thread: run the app, hand the bytes back to the I/O thread."""
        close = conn.close_after
        try:
            captured: list[Any] = []

            def start_response(
                status: str, headers: list[tuple[str, str]], exc_info: Any = None
            ) -> Callable[[bytes], None]:
                captured[:] = [status, headers]
                return lambda data: None  # the sidecar's app never uses write()

            result = self.app(environ, start_response)
            try:
                body = b"".join(result)
            finally:
                close_result = getattr(result, "close", None)
                if close_result is not None:
                    close_result()
            status, headers = captured
            if environ["REQUEST_METHOD"] == "HEAD":
                data = _response(status, headers, b"", close, len(body))
            else:
                data = _response(status, headers, body, close)
        except Exception:
            log.exception("sidecar.http_failed", path=environ.get("PATH_INFO"))
            data = _response("500 Internal Server Error", [], b"internal error\n", True)
            close = True
        self._done.append((conn, data, close))
        self._wake()

    def _finish_answers(self) -> None:
        while self._done:
            conn, data, close = self._done.popleft()
            if conn.sock in self._conns:
                self._respond(conn, data, close)

    def _respond(self, conn: _Conn, data: bytes, close: bool) -> None:
        conn.state = _WRITING
        conn.out = data
        conn.close_after = close
        conn.deadline = time.monotonic() + self.write_timeout_s
        self._touch(conn)
        self._flush(conn)

    def _flush(self, conn: _Conn) -> None:
        try:
            sent = conn.sock.send(conn.out)
        except (BlockingIOError, InterruptedError):
            sent = 0
        except OSError:
            self._close(conn)
            return
        conn.out = conn.out[sent:]
        if conn.out:
            self._selector.modify(conn.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, "conn")
            return
        if conn.close_after:
            self._close(conn)
            return
        # Kept alive: wait for the next request (maybe already buffered).
        self._selector.modify(conn.sock, selectors.EVENT_READ, "conn")
        conn.state = _READING
        now = time.monotonic()
        conn.deadline = now + (self.header_timeout_s if conn.buf else self.idle_timeout_s)
        if conn.buf:
            self._try_request(conn)


def _response(
    status: str,
    headers: list[tuple[str, str]],
    body: bytes,
    close: bool,
    length: int | None = None,
) -> bytes:
    lines = [f"HTTP/1.1 {status}"]
    names = set()
    for name, value in headers:
        names.add(name.lower())
        lines.append(f"{name}: {value}")
    if "content-length" not in names:
        lines.append(f"Content-Length: {len(body) if length is None else length}")
    if "content-type" not in names:
        lines.append("Content-Type: text/plain; charset=utf-8")
    lines.append("Server: wsgiwatch-sidecar")
    lines.append(f"Connection: {'close' if close else 'keep-alive'}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
