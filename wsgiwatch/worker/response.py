"""One request on the pure-Python path: the ``start_response`` the app is given, and for a
list or tuple response the response itself; at ``close()`` it writes the record.

One object does both jobs, to keep allocations per request few. What the record needs from
the request's start lives in its scoreboard slot, not here: at exit the slot is copied into
the ring in one go (:meth:`SpoolWriter.commit`). Streams and file wrappers are watched by
:mod:`.streams`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Final

from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.writer import SpoolWriter
from wsgiwatch.worker import accept_sources, request_keys
from wsgiwatch.worker.call_state import EXHAUSTED, FINISHED, PROXY_PENDING, RECORDED_FLAGS
from wsgiwatch.worker.internal_errors import internal_error
from wsgiwatch.worker.spool_check import check_spool
from wsgiwatch.worker.streams import wrap_other

#: Frameworks put their route template here (``/users/<int:id>``) to label the request.
ROUTE_KEY: Final = "wsgiwatch.route"

Environ = dict[str, Any]
ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], object]]

_monotonic_ns = time.monotonic_ns
_EXIT_bytes = fmt.RECORD_EXIT.pack
_ROUTE_LEN = fmt.ROUTE_FIELD.size
_ROUTE_OFF = fmt.RECORD_ROUTE_OFFSET
_NO_SLOT = fmt.NO_SLOT
_SLOT_BASE = fmt.HEADER_SIZE
_SLOT_SIZE = fmt.SLOT_SIZE
_templates = request_keys.templates
_statuses = request_keys.statuses
_ports = request_keys.ports
_EMPTY: Final[Environ] = {}


class Call(list[bytes]):
    """One request (see the module docstring). ``PythonWSGIWatch.__call__`` fills the
    attributes; ``image`` and ``server_write`` are only set where they are used."""

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
                self.flags |= EXHAUSTED
                # This object is itself a list: the server iterates and sizes it natively
                # (waitress sets Content-Length for one-chunk sequences: the response must
                # not change because we watch it), and calls our close().
                self.extend(result)
                return self
            return wrap_other(self, self.environ, result)
        except Exception:
            internal_error(self.writer)
            self.finish()
            return result

    def close(self) -> None:
        """The server is done with a list or tuple response (which has no close())."""
        self.finish()

    def __del__(self) -> None:
        # A server that releases the list response without calling close() (bjoern takes
        # the one item of a one-item list and drops the list, against PEP 3333): record it
        # now, flagged, so that its slot is never left taken. Only a response handed to the
        # server (EXHAUSTED) and not yet recorded qualifies.
        flags = getattr(self, "flags", FINISHED)
        if flags & (EXHAUSTED | FINISHED) == EXHAUSTED:
            self.flags = flags | fmt.FLAG_NO_CLOSE_SEEN
            self.finish()

    def finish(self) -> None:
        """Write the record and free the slot; never raises."""
        flags = self.flags
        if flags & FINISHED:
            return
        self.flags = flags | FINISHED
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
            proxy = accept_sources.proxy_wall_ns(environ, flags) if flags & PROXY_PENDING else 0
            if proxy < 0:  # there, but not believable: counted, not recorded
                writer.bump(fmt.OFF_TIMES_REJECTED)
                proxy = 0
            status = self.status
            code = _statuses.get(status) or request_keys.status_code(status)
            port_text = environ.get("SERVER_PORT")
            try:
                server_port = _ports.get(port_text) or request_keys.port_number(port_text)
            except TypeError:  # unhashable
                server_port = 0
            exit_part = _EXIT_bytes(
                self.headers_ns,
                exit_ns,
                proxy,
                self.bytes_sent,
                code,
                flags & RECORDED_FLAGS,
                server_port,
                slot,
            )
            if slot != _NO_SLOT:
                start = _SLOT_BASE + slot * _SLOT_SIZE
                image = writer.mm[start : start + _SLOT_SIZE]
            else:
                image = bytes(self.image)  # set whenever there is no slot
            if route is not None:  # the route is the slot's last field
                image = image[:_ROUTE_OFF] + route.ljust(_ROUTE_LEN, b"\0")
            writer.commit(image + exit_part)
        except Exception:
            if not writer.mm.closed:  # else the spool was lost and replaced meanwhile
                internal_error(writer)
        if slot != _NO_SLOT:
            try:
                writer.release_slot(slot)
            except Exception:
                if not writer.mm.closed:
                    internal_error(writer)
        # Drop the environ early: the server may keep this object a while.
        self.environ = _EMPTY
        if exit_ns >= writer.next_check_ns:  # once a second: is the file still there?
            try:
                check_spool(writer, exit_ns)
            except Exception:
                internal_error(writer)
