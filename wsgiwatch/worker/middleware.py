"""WSGIWatch: the WSGI middleware that records each request into this process's spool.

The per-request work is deliberately plain: two clock reads, a few dict lookups in bounded
caches, one scoreboard write at entry and one ring record at exit (``close()`` of the
response, so streamed bodies count). Anything that goes wrong inside wsgiwatch is counted in
the spool header and swallowed; exceptions of the app itself pass through untouched.

The common case runs in C when the accelerator is built (``wsgiwatch/worker/_speedups.c``,
``wsgiwatch.worker.accelerator``): ``WSGIWatch`` then derives from its ``Recorder``. The same logic
is here in Python, as ``PythonWSGIWatch``, for builds without a compiler; the C code also
calls back into this module for what is rare (first request, odd environs, accept sources,
streams, file wrappers), so each of those exists once.
"""

from __future__ import annotations

import logging
import mmap
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final, Protocol

from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.writer import DEFAULT_ACCEPTS, DEFAULT_RING, DEFAULT_SLOTS, SpoolWriter
from wsgiwatch.worker import accept_hook, autohook
from wsgiwatch.worker.accelerator import speedups
from wsgiwatch.worker.accept_hook import arrival_from_socket
from wsgiwatch.worker.arrival import parse_mod_wsgi_time, parse_proxy_header, wall_to_monotonic_ns
from wsgiwatch.worker.process_spool import request_geometry, resolve_dir, writer_for
from wsgiwatch.worker.routes import BytesCache, path_route_bytes, peer_bytes, template_route_bytes

__all__ = ["ROUTE_KEY", "PythonWSGIWatch", "WSGIWatch"]

logger = logging.getLogger("wsgiwatch")

#: Frameworks put their route template here (``/users/<int:id>``) to label the request.
ROUTE_KEY: Final = "wsgiwatch.route"

Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

_monotonic_ns = time.monotonic_ns
_get_native_id = threading.get_native_id
_METHOD_CODES = fmt.METHOD_CODES
_SLOT_pack = fmt.SLOT.pack_into
_new_call = list.__new__
_EXIT_bytes = fmt.RECORD_EXIT.pack
_ROUTE_LEN = fmt.ROUTE_FIELD.size
_EXIT_OFF = fmt.RECORD_EXIT_OFFSET
_ROUTE_OFF = fmt.RECORD_ROUTE_OFFSET
_U64_pack = fmt.U64.pack_into
_INVALID = fmt.U64.pack(fmt.INVALID_SEQ)
_SEQ_OFF = fmt.RECORD_SEQ_OFFSET
_RECORD_SIZE = fmt.RECORD_SIZE
_HEAD_OFF = fmt.OFF_RING_HEAD
_NO_SLOT = fmt.NO_SLOT
_SLOT_BASE = fmt.HEADER_SIZE
_SLOT_SIZE = fmt.SLOT_SIZE

# Bounded caches shared by all instances: values seen over and over are encoded once.
_templates = BytesCache(template_route_bytes)
_peers: dict[str, bytes] = {}  # REMOTE_ADDR -> stored bytes; bounded in _peer_bytes
_thread_local = threading.local()


_STATUS: dict[str, int] = {}  # status line -> code, bounded


def _status_code(status: str) -> int:
    try:
        code = int(status[:3])
    except (TypeError, ValueError):
        return 0
    code = code if 0 < code < 1000 else 0
    if len(_STATUS) < 512:
        _STATUS[status] = code
    return code


def _native_id() -> int:
    """This thread's OS id, looked up once per thread (``get_native_id`` is a syscall's
    worth of time). Kept in a thread-local, not a dict by ``get_ident()``: CPython hands
    a dead thread's ident to the next new thread."""
    try:
        tid: int = _thread_local.tid
    except AttributeError:
        tid = _thread_local.tid = _get_native_id() & 0xFFFF_FFFF
    return tid


class _Settings:
    """What both implementations share: the settings, and opening the spool (once)."""

    if not TYPE_CHECKING:  # the subclasses hold the fields (mypy wants them declared here)
        __slots__ = ()
    app: WSGIApp
    _capacity: int | None
    _dir: str
    _geometry: tuple[int, int, int]
    _proxy_headers: bool

    def __init__(
        self,
        app: WSGIApp,
        *,
        spool_dir: str | None = None,
        capacity: int | None = None,
        proxy_headers: bool = True,
        slots: int = DEFAULT_SLOTS,
        ring_size: int = DEFAULT_RING,
        accept_events: int = DEFAULT_ACCEPTS,
        accept_hook: bool = True,
    ) -> None:
        """Wrap a WSGI app: ``application = WSGIWatch(application)``.

        ``spool_dir``: where the spool files go (default ``$WSGIWATCH_DIR``, else a private
        per-user directory in ``/dev/shm`` or the temp dir). ``capacity``: how many requests
        one process runs at once (threads), if you want to state it; otherwise the sidecar
        infers it. ``proxy_headers``: read ``X-Request-Start`` / ``X-Queue-Start`` from a
        front proxy (only ever a timestamp; never stored otherwise). ``slots``,
        ``ring_size``, ``accept_events``: the spool's geometry (docs/spool-format.md).
        """
        if not (0 < slots < fmt.NO_SLOT and ring_size > 0 and accept_events > 0):
            raise ValueError("slots (below 65535), ring_size and accept_events must be positive")
        if capacity is not None and capacity < 1:
            raise ValueError("capacity must be positive")
        self.app = app
        self._dir = resolve_dir(spool_dir)
        self._capacity = capacity
        self._proxy_headers = proxy_headers
        self._geometry = (slots, ring_size, accept_events)
        request_geometry(self._dir, self._geometry)
        if accept_hook:
            autohook.install(self._dir)

    @property
    def spool_dir(self) -> str:
        return self._dir

    def _first_request(self, environ: Environ) -> SpoolWriter | None:
        """Slow path, once per process: open the spool and note what serves us."""
        writer = writer_for(self._dir)
        if (
            writer is not None
            and (writer.slot_count, writer.ring_capacity, writer.accept_capacity) != self._geometry
            and not _warned_geometry
        ):
            _warned_geometry.append(True)
            logger.warning(
                "wsgiwatch: the spool in %s was opened with another size than "
                "this WSGIWatch asks for (two apps, one directory?)",
                self._dir,
            )
        if writer is not None:
            try:
                writer.note_server(
                    _server_software(environ),
                    bool(environ.get("wsgi.multithread")),
                    bool(environ.get("wsgi.multiprocess")),
                )
                if self._capacity:
                    writer.set_declared_capacity(self._capacity)
            except Exception:
                _internal_error(writer)
        _ready[self._dir] = writer
        return writer


class PythonWSGIWatch(_Settings):
    """Records each request of the app it wraps into this process's spool (see
    ``__init__``), in pure Python: what ``WSGIWatch`` is when the C accelerator is not built
    (or ``WSGIWATCH_PURE_PYTHON=1``). Same arguments, same records as the C path."""

    __slots__ = ("_capacity", "_dir", "_geometry", "_proxy_headers", "app")

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        # The entry bookkeeping is inlined here rather than in _Call.__init__: one Python
        # frame less per request is a tenth of the whole cost.
        try:
            writer = _ready[self._dir]
        except KeyError:
            writer = self._first_request(environ)
        if writer is None:
            return self.app(environ, start_response)
        slot = _NO_SLOT
        try:
            call = _new_call(_Call)
            call.writer = writer
            call.environ = environ
            call.server_start_response = start_response
            call.status = ""
            call.headers_ns = call.bytes_sent = 0
            get = environ.get
            try:
                peer, port, method, peer_b, path_b = _request_keys(get)
            except (TypeError, AttributeError, ValueError):
                # An odd environ (bytes, numbers, unhashable values): the slow, careful way.
                peer, port, method, peer_b, path_b = _request_keys(_sane_get(environ))
            if (
                _ACCEPTED
                or _MOD_WSGI_START in environ
                or (
                    self._proxy_headers
                    and (_X_REQUEST_START in environ or _X_QUEUE_START in environ)
                )
            ):
                accept, arrival, source, flags = _accept_sources(
                    environ, peer, port, self._proxy_headers
                )
            else:
                accept = arrival = source = flags = 0
            call.flags = flags
            tid = _native_id()
            # The slot is taken last, so nothing above can fail while holding it; try/pop
            # rather than check-then-pop, since another thread may empty the list between.
            try:
                slot = writer.free_slots.pop()
            except IndexError:
                slot = writer.acquire_slot()
            call.slot = slot
            if slot != _NO_SLOT:
                target: mmap.mmap | bytearray = writer.mm
                offset = _SLOT_BASE + slot * _SLOT_SIZE
            else:  # every slot busy (counted): the image waits here for the record
                target = call.image = bytearray(_SLOT_SIZE)
                offset = 0
            _SLOT_pack(
                target,
                offset,
                next(writer.request_numbers),
                _monotonic_ns(),
                accept,
                arrival,
                tid,
                port,
                method,
                source,
                peer_b,
                path_b,
            )
        except Exception:
            _internal_error(writer)
            if slot != _NO_SLOT:  # taken but never written: give it back
                writer.free_slots.append(slot)
            return self.app(environ, start_response)
        try:
            # A bound method, not the object itself: calling an instance goes through
            # type slots and costs ~90 ns more here.
            result = self.app(environ, call.start_response)
        except BaseException:
            call.flags |= fmt.FLAG_APP_RAISED
            call.finish()
            raise
        return call.wrap(result)


if TYPE_CHECKING or speedups is None:
    WSGIWatch = PythonWSGIWatch
else:

    class WSGIWatch(speedups.Recorder, _Settings):
        """Records each request of the app it wraps into this process's spool (see
        ``__init__``). Calling it runs the C accelerator's ``Recorder.__call__``."""

        __slots__ = ("_capacity", "_geometry")


# directory -> this process's writer (None: recording is off). Forgotten after a fork,
# like the thread ids (a forked child's thread has its parent's ident, not its native id).
_ready: dict[str, SpoolWriter | None] = {}
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_ready.clear)
    os.register_at_fork(after_in_child=lambda: _thread_local.__dict__.clear())


def _request_keys(get: Callable[[str], Any]) -> tuple[str, int, int, bytes, bytes]:
    """(peer, peer port, method code, peer bytes, route bytes) through the bounded caches."""
    peer = get("REMOTE_ADDR") or ""
    port_text = get("REMOTE_PORT")
    port = _ports.get(port_text)
    if port is None:
        port = _port_number(port_text)
    path = get("PATH_INFO") or ""
    script = get("SCRIPT_NAME")
    if script:  # an app mounted under a prefix: the route is the whole path
        path = script + path
    return (
        peer,
        port,
        _METHOD_CODES.get(get("REQUEST_METHOD"), 0),
        _peers.get(peer) or _peer_bytes(peer),
        _path_bytes.get(path) or _route_for_path(path),
    )


_SANE_KEYS: Final = ("REMOTE_ADDR", "REMOTE_PORT", "PATH_INFO", "REQUEST_METHOD", "SCRIPT_NAME")


def _sane_get(environ: Environ) -> Callable[[str], Any]:
    """``environ.get`` for the keys we read, with anything but a str turned into ''."""
    clean: dict[str, str] = {}
    for key in _SANE_KEYS:
        try:
            value = environ.get(key)
        except Exception:
            value = None
        clean[key] = value if isinstance(value, str) else ""
    return clean.get


def _server_software(environ: Environ) -> str:
    """SERVER_SOFTWARE, or what else says which server this is (uWSGI sets none)."""
    software = str(environ.get("SERVER_SOFTWARE") or "")
    if not software and _UWSGI_VERSION in environ:
        version = environ[_UWSGI_VERSION]
        if isinstance(version, bytes):
            version = version.decode("ascii", "replace")
        software = f"uWSGI/{version}"
    return software


def _odd_request_keys(environ: Environ) -> tuple[str, int, int, bytes, bytes]:
    return _request_keys(_sane_get(environ))


def _internal_error(writer: SpoolWriter) -> None:
    try:
        writer.bump(fmt.OFF_WRITE_ERRORS)
    except Exception:
        pass
    if not _logged:
        _logged.append(True)
        logger.exception("wsgiwatch: internal error while recording a request (logged once)")


def _log_internal_error(exc: BaseException) -> None:
    """The C path's report of an internal error (it has counted it in the header)."""
    if not _logged:
        _logged.append(True)
        logger.error(
            "wsgiwatch: internal error while recording a request (logged once)", exc_info=exc
        )


_logged: list[bool] = []
_warned_geometry: list[bool] = []


class _Call(list[bytes]):
    """One request: its ``start_response`` (a method the app gets bound), then the response
    iterable. One object does both jobs, to keep allocations per request few. What the record
    needs from the request's start lives in its scoreboard slot, not here: at exit the slot
    is copied into the ring in one go. WSGIWatch.__call__ fills the attributes; ``result``,
    ``iterator``, ``image`` and ``server_write`` are only set where they are used.
    """

    __slots__ = (
        "bytes_sent",
        "environ",
        "flags",
        "headers_ns",
        "image",
        "server_start_response",
        "server_write",
        "slot",
        "status",
        "writer",
    )
    bytes_sent: int
    environ: Environ
    flags: int
    headers_ns: int
    image: bytearray
    server_start_response: StartResponse
    server_write: Callable[[bytes], object]
    slot: int
    status: str
    writer: SpoolWriter

    # -- start_response --------------------------------------------------------------------
    def start_response(
        self, status: str, headers: list[tuple[str, str]], exc_info: ExcInfo | None = None
    ) -> Callable[[bytes], object]:
        called_ns = _monotonic_ns()
        # The server first: when it refuses (headers already sent) and re-raises, what it
        # sent stays what we record.
        if exc_info is not None:
            write = self.server_start_response(status, headers, exc_info)
        else:
            write = self.server_start_response(status, headers)
        self.status = status
        self.headers_ns = called_ns
        self.server_write = write
        return self.write

    def write(self, data: bytes) -> object:
        """The ``write()`` callable of PEP 3333: counted, then the server's."""
        self.bytes_sent += len(data)
        return self.server_write(data)

    # -- the response iterable -------------------------------------------------------------
    def wrap(self, result: Iterable[bytes]) -> Iterable[bytes]:
        try:
            kind = type(result)
            if kind is list or kind is tuple:
                self.bytes_sent += sum(map(len, result))
                self.flags |= _EXHAUSTED
                # This object is itself a list: the server iterates and sizes it natively
                # (waitress sets Content-Length for one-chunk sequences: the response must
                # not change because we watch it), and calls our close().
                self.extend(result)
                return self
            return _wrap_other(self, self.environ, result)
        except Exception:
            _internal_error(self.writer)
            self.finish()
            return result

    def close(self) -> None:
        """The server is done with a list or tuple response (which has no close())."""
        self.finish()

    def finish(self) -> None:
        """Write the record and free the slot; never raises."""
        flags = self.flags
        if flags & _FINISHED:
            return
        self.flags = flags | _FINISHED
        exit_ns = _monotonic_ns()
        writer = self.writer
        environ = self.environ
        slot = self.slot
        try:
            # Everything that can fail comes before the ring entry is claimed: a claimed
            # entry left unwritten would hold readers back until they give it up as torn.
            template = environ.get(ROUTE_KEY)
            route = None
            if template and isinstance(template, str):
                route = _templates.get(template)
                flags |= fmt.FLAG_ROUTE_TEMPLATE
            proxy = _proxy_wall_ns(environ) if flags & _PROXY_PENDING else 0
            status = self.status
            code = _STATUS.get(status) or _status_code(status)
            port_text = environ.get("SERVER_PORT")
            try:
                server_port = _ports.get(port_text) or _port_number(port_text)
            except TypeError:  # unhashable
                server_port = 0
            exit_part = _EXIT_bytes(
                self.headers_ns,
                exit_ns,
                proxy,
                self.bytes_sent,
                code,
                flags & _RECORDED_FLAGS,
                server_port,
                slot,
            )
            mm = writer.mm
            if slot != _NO_SLOT:
                start = _SLOT_BASE + slot * _SLOT_SIZE
                image = mm[start : start + _SLOT_SIZE]
            else:
                image = bytes(self.image)  # set whenever there is no slot
            if route is not None:  # the route is the slot's last field
                image = image[:_ROUTE_OFF] + route.ljust(_ROUTE_LEN, b"\0")
            body = image + exit_part
            fast = writer.fast
            if fast is not None:  # with the accelerator, C writes every ring entry
                fast.commit(body)
                return self._release(writer, slot)
            # One writer at a time from claim to publish: a thread paused between these
            # stores could otherwise be lapped by the others and publish a mixed entry.
            # (acquire/try/finally rather than ``with``: 150 ns less per request here)
            lock = writer.lock
            lock.acquire()
            try:
                seq = next(writer.record_seq)
                off = writer.record_base + (seq % writer.ring_capacity) * _RECORD_SIZE
                mm[off + _SEQ_OFF : off + _RECORD_SIZE] = _INVALID
                mm[off : off + _SEQ_OFF] = body
                seq += 1  # entries carry sequence + 1, so zeroed memory never looks written
                _U64_pack(mm, off + _SEQ_OFF, seq)
                _U64_pack(mm, _HEAD_OFF, seq)
            finally:
                lock.release()
        except Exception:
            _internal_error(writer)
        self._release(writer, slot)

    def _release(self, writer: SpoolWriter, slot: int) -> None:
        if slot != _NO_SLOT:
            try:
                _U64_pack(writer.mm, _SLOT_BASE + slot * _SLOT_SIZE, 0)
                writer.free_slots.append(slot)
            except Exception:
                _internal_error(writer)
        # Drop the environ early: the server may keep this object a while.
        self.environ = _EMPTY


class _Response(Protocol):
    """What _Stream and _wrap_file need of a request: ``_Call`` or the accelerator's."""

    flags: int
    bytes_sent: int

    def finish(self) -> None: ...


def _wrap_file(call: _Response, result: Any) -> Any:
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


def _wrap_other(call: _Response, environ: Environ, result: Iterable[bytes]) -> Iterable[bytes]:
    """Any response but a list or tuple: a server's file wrapper is handed back as it is
    (watched through its close()), anything else iterated through a _Stream."""
    wrapper = environ.get("wsgi.file_wrapper")
    if wrapper is not None and (
        type(result) is wrapper
        if isinstance(wrapper, type)
        # A file_wrapper that is a function (uWSGI's) gives the file itself back, and the
        # server sends it with sendfile only when the app returns that very object.
        else hasattr(result, "fileno") or hasattr(result, "read")
    ):
        return _wrap_file(call, result)  # type: ignore[no-any-return]
    return _Stream(call, result)


_UWSGI_VERSION: Final = "uwsgi.version"


class _Stream:
    """The response iterable for anything but a list or tuple: counts bytes, sees the end,
    and passes ``close()`` through to the app's iterable."""

    __slots__ = ("call", "iterator", "result")

    def __init__(self, call: _Response, result: Iterable[bytes]) -> None:
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
            self.call.flags |= _EXHAUSTED
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
            if not call.flags & (_EXHAUSTED | fmt.FLAG_APP_RAISED):
                call.flags |= fmt.FLAG_CLIENT_GONE
            call.finish()
            self.result = self.iterator = None  # drop the app's objects early


# Flag bits kept in memory only, above the 16 bits that go into the record.
_PROXY_PENDING: Final = 1 << 16  # a proxy header is there to parse at exit
_EXHAUSTED: Final = 1 << 17  # the response was iterated to its end
_FINISHED: Final = 1 << 18  # the record is written
_RECORDED_FLAGS: Final = 0xFFFF
_EMPTY: Final[Environ] = {}
_ACCEPTED = accept_hook.ACCEPTED  # the same dict; the hook only ever mutates it in place
_ports: dict[object, int] = {}  # port text -> number; bounded in _port_number
_path_bytes: dict[str, bytes] = {}  # PATH_INFO -> stored route bytes; bounded below


def _peer_bytes(peer: str) -> bytes:
    if len(_peers) >= 4096:
        _peers.clear()
    value = _peers[peer] = peer_bytes(peer)
    return value


def _port_number(text: object) -> int:
    try:
        port: int = int(text) & 0xFFFF  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return 0
    if isinstance(text, str):
        if len(_ports) >= 70000:
            _ports.clear()
        _ports[text] = port
    return port


def _route_for_path(path: str) -> bytes:
    route = path_route_bytes(path)
    if len(_path_bytes) >= 2048:  # a flood of distinct paths costs time, never memory
        _path_bytes.clear()
    _path_bytes[path] = route
    return route


_MOD_WSGI_START: Final = "mod_wsgi.request_start"
_X_REQUEST_START: Final = "HTTP_X_REQUEST_START"
_X_QUEUE_START: Final = "HTTP_X_QUEUE_START"


def _accept_sources(
    environ: Environ, peer: str, port: int, proxy_headers: bool
) -> tuple[int, int, int, int]:
    """(accept_ns, arrival_ns, source, flags) from the accept hook or the server's keys."""
    accept = arrival = source = flags = 0
    conn = _ACCEPTED.get((peer, port)) if _ACCEPTED else None
    if conn is not None:
        accept, arrival, uses, ready = conn
        conn[2] = uses + 1
        conn[3] = 0
        source = fmt.SOURCE_HOOK
        if uses:
            flags = fmt.FLAG_REUSED_CONNECTION
            arrival = 0  # the connection's first request's; this one came later
        if ready:  # the server said when it had this request complete (waitress)
            arrival = ready
            flags |= fmt.FLAG_ARRIVAL_SERVER
        elif arrival:
            flags |= fmt.FLAG_ARRIVAL_TCP_INFO
        else:
            # No bytes had come at accept, or a kept-alive request: the socket the server
            # read it from says when they came (gunicorn hands it over). One getsockopt,
            # paid only by those who turned the hook on.
            arrival = arrival_from_socket(environ.get("gunicorn.socket"), _monotonic_ns())
            if arrival:
                flags |= fmt.FLAG_ARRIVAL_TCP_INFO
    elif _MOD_WSGI_START in environ:
        now_wall = time.time_ns()
        started = parse_mod_wsgi_time(environ[_MOD_WSGI_START], now_wall)
        if started:
            accept = wall_to_monotonic_ns(started, now_wall, _monotonic_ns())
            source = fmt.SOURCE_MOD_WSGI
    if proxy_headers and (_X_REQUEST_START in environ or _X_QUEUE_START in environ):
        flags |= _PROXY_PENDING
    return accept, arrival, source, flags


def _proxy_wall_ns(environ: Environ) -> int:
    header = environ.get(_X_REQUEST_START) or environ.get(_X_QUEUE_START)
    if not isinstance(header, str):
        return 0
    return parse_proxy_header(header, time.time_ns()) or 0


def _share_with_accelerator() -> None:
    """Hand the C path this module's caches and slow paths, so each exists once. Called at
    import; tests that swap one of them call it again."""
    if speedups is None:
        return
    speedups.configure(
        ready=_ready,
        peers=_peers,
        peer_bytes=_peer_bytes,
        ports=_ports,
        port_number=_port_number,
        path_bytes=_path_bytes,
        route_for_path=_route_for_path,
        method_codes=_METHOD_CODES,
        odd_keys=_odd_request_keys,
        accepted=_ACCEPTED,
        accept_sources=_accept_sources,
        templates=_templates.entries,
        template_bytes=_templates.get,
        proxy_wall_ns=_proxy_wall_ns,
        statuses=_STATUS,
        status_code=_status_code,
        wrap_other=_wrap_other,
        python_call=PythonWSGIWatch.__call__,
        log_error=_log_internal_error,
    )


_share_with_accelerator()
