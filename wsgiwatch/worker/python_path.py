"""WSGIWatch in pure Python: what runs when the C accelerator is not built (or
``WSGIWATCH_PURE_PYTHON=1``), and what the C path hands an odd environ to. Same arguments,
same records as the C path (tests/worker/test_speedups.py holds them to the same bytes)."""

from __future__ import annotations

import mmap
import os
import threading
import time
from collections.abc import Iterable

from wsgiwatch.spool import layout as fmt
from wsgiwatch.worker.accept_sources import (
    ACCEPTED,
    MOD_WSGI_START,
    X_QUEUE_START,
    X_REQUEST_START,
    accept_sources,
)
from wsgiwatch.worker.call_state import TIME_REJECTED
from wsgiwatch.worker.internal_errors import internal_error
from wsgiwatch.worker.request_keys import request_keys, sane_get
from wsgiwatch.worker.response import Call
from wsgiwatch.worker.settings import Environ, StartResponse, WatchSettings, ready
from wsgiwatch.worker.uwsgi_identity import NO_PORT, connection_port

_monotonic_ns = time.monotonic_ns
_get_native_id = threading.get_native_id
_SLOT_pack = fmt.SLOT.pack_into
_new_call = list.__new__
_NO_SLOT = fmt.NO_SLOT
_SLOT_BASE = fmt.HEADER_SIZE
_SLOT_SIZE = fmt.SLOT_SIZE
_IDENTITY_UNTIL = fmt.OFF_IDENTITY_UNTIL
_U64_from = fmt.U64.unpack_from

# This thread's OS id, looked up once per thread (``get_native_id`` is a syscall's worth of
# time). A thread-local, not a dict by ``get_ident()``: CPython hands a dead thread's ident
# to the next new thread. Forgotten after a fork: the child's thread has a new id.
_thread_local = threading.local()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lambda: _thread_local.__dict__.clear())


def _native_id() -> int:
    try:
        tid: int = _thread_local.tid
    except AttributeError:
        tid = _thread_local.tid = _get_native_id() & 0xFFFF_FFFF
    return tid


class PythonWSGIWatch(WatchSettings):
    """Records each request of the app it wraps into this process's spool (see
    ``__init__``), in pure Python: what ``WSGIWatch`` is when the C accelerator is not built
    (or ``WSGIWATCH_PURE_PYTHON=1``). Same arguments, same records as the C path."""

    __slots__ = ("_capacity", "_dir", "_dir_given", "_geometry", "_trusted_proxies", "app")

    def __call__(self, environ: Environ, start_response: StartResponse) -> Iterable[bytes]:
        # The entry bookkeeping is inlined here rather than in Call.__init__: a Python
        # frame per request is a large share of this path's cost.
        try:
            writer = ready[self._dir]
        except KeyError:
            writer = self._first_request(environ)
        if writer is None:
            return self.app(environ, start_response)
        slot = _NO_SLOT
        try:
            call = _new_call(Call)
            call.writer = writer
            call.environ = environ
            call.server_start_response = start_response
            call.status = ""
            call.headers_ns = call.bytes_sent = 0
            get = environ.get
            try:
                peer, port, method, peer_b, path_b = request_keys(get)
            except (TypeError, AttributeError, ValueError):
                # An odd environ (bytes, numbers, unhashable values): the slow, careful way.
                peer, port, method, peer_b, path_b = request_keys(sane_get(environ))
            if (
                ACCEPTED
                or MOD_WSGI_START in environ
                or (
                    self._trusted_proxies
                    and (X_REQUEST_START in environ or X_QUEUE_START in environ)
                )
            ):
                accept, arrival, source, flags = accept_sources(
                    environ, peer, port, self._trusted_proxies
                )
                if flags & TIME_REJECTED:
                    flags &= ~TIME_REJECTED
                    writer.bump(fmt.OFF_TIMES_REJECTED)
            else:
                accept = arrival = source = flags = 0
            if writer.mm[_IDENTITY_UNTIL]:  # the sidecar asks for connections' own ports
                found = connection_port(_U64_from(writer.mm, _IDENTITY_UNTIL)[0])
                if found != NO_PORT:
                    port = found
                    flags |= fmt.FLAG_PEER_FROM_SOCKET
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
            internal_error(writer)
            if slot != _NO_SLOT:  # taken but never written: give it back
                writer.free_slots.append(slot)
            return self.app(environ, start_response)
        try:
            # A bound method, not the object itself: calling an instance goes through
            # type slots, which is slower.
            result = self.app(environ, call.start_response)
        except BaseException:
            call.flags |= fmt.FLAG_APP_RAISED
            call.finish()
            raise
        return call.wrap(result)
