"""The opt-in accept hook: the exact time each connection was accepted, for servers that
accept in Python (gunicorn sync and gthread, waitress).

Nothing here runs unless you ask for it, by one explicit call:

- gunicorn: in ``gunicorn.conf.py``, ``from wsgiwatch.gunicorn_config import post_worker_init``
  (or call :func:`install_gunicorn` from your own ``post_worker_init``);
- waitress: ``wsgiwatch.worker.accept_hook.serve_waitress(app, ...)`` instead of ``waitress.serve``.

Per accepted connection it reads the clock and ``TCP_INFO`` (one ``getsockopt``):
``tcpi_last_data_recv`` then says how long the request's bytes had already
waited in the kernel, which gives the arrival time. It records the accept in the spool's
accept ring, so the sidecar sees "accepted, not started yet" while it happens, and in
:data:`ACCEPTED`, where the middleware finds it when the request starts.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import sys
import time
from collections.abc import Callable
from typing import Any, Final, TypeGuard

from wsgiwatch.spool import layout as fmt
from wsgiwatch.worker.accelerator import speedups
from wsgiwatch.worker.process_spool import resolve_dir, writer_for
from wsgiwatch.worker.routes import peer_bytes

logger = logging.getLogger("wsgiwatch")

#: The connections the hook saw accepted, keyed by the peer's port: the C path looks a
#: request up by the port it already parsed, with no tuple to build and no hash of the
#: server's fresh ``REMOTE_ADDR`` string (the hook's share of a request: 444 instructions,
#: was 1,330 keyed by (address, port); callgrind, docs/benchmarks.md table 1).
#: Each entry is a list ``[accept_ns, arrival_ns or 0, requests served so far, when the
#: server found the next request complete or 0, peer address, next entry]``: the address
#: is compared, and connections from different addresses with the same port (distinct
#: clients, no proxy in front) are chained through the last item, newest first, at most
#: :data:`CHAIN_MAX` deep. A new connection from the same address and port replaces the old
#: entry (the kernel never has both open), which is why a stale entry can never be matched.
#: A unix-socket connection (no port) is keyed by ``unix_key(fd)``, a negative number.
#: Read it through :func:`connection`; an entry not shaped as :func:`remember` makes it is
#: no entry (both paths, Python's and C's, judge it so).
ACCEPTED: dict[int, list[Any]] = {}
ACCEPTED_LIMIT: Final = 8192
#: Indexes of an entry, and its length (the C path has the same numbers).
ACCEPT, ARRIVAL, USES, READY, PEER, NEXT = range(6)
ENTRY_LEN: Final = 6
#: How many connections with one port (from as many addresses) are kept, and walked.
CHAIN_MAX: Final = 4


#: The int object a port is keyed by: the very one the C path looks up (a lookup by
#: identity, no comparison of ints); any other int stands for itself.
_port_key: Callable[[int], int] = speedups.port_key if speedups is not None else int


def unix_key(fd: int) -> int:
    """The :data:`ACCEPTED` key of a unix-socket connection: below every port."""
    return -1 - fd


def _well_formed(entry: object) -> TypeGuard[list[Any]]:
    """Shaped as :func:`remember` makes it: the C path reads only such entries itself."""
    if type(entry) is not list or len(entry) != ENTRY_LEN:
        return False
    accept, arrival, uses, ready, peer, _ = entry
    # exact ints (no bool, no subclass), each in 0 .. 2**63 - 1: no bit at 63 or above
    return (
        type(peer) is str
        and type(accept) is type(arrival) is type(uses) is type(ready) is int
        and not (accept | arrival | uses | ready) >> 63
    )


def connection(peer: str, key: int) -> list[Any] | None:
    """The entry of the connection from ``peer`` with port (or :func:`unix_key`) ``key``, or
    None. Never raises: a malformed entry (no hook writes one) ends the search."""
    entry: object = ACCEPTED.get(key)
    for _ in range(CHAIN_MAX):
        if not _well_formed(entry):
            return None
        if entry[PEER] == peer:
            return entry
        entry = entry[NEXT]
    return None


def remember(peer: str, key: int, accept_ns: int, arrival_ns: int) -> None:
    """Note a new connection: it goes first in its port's chain, where an older one from the
    same address (closed, since the kernel has a new one) leaves it."""
    key = _port_key(key)
    kept: list[list[Any]] = []
    entry: object = ACCEPTED.pop(key, None)  # popped: set again, it counts as the newest
    while _well_formed(entry) and len(kept) < CHAIN_MAX - 1:
        if entry[PEER] != peer:
            kept.append(entry)
        entry = entry[NEXT]
    for index, older in enumerate(kept):  # relinked: the one that left is skipped
        older[NEXT] = kept[index + 1] if index + 1 < len(kept) else None
    if len(ACCEPTED) >= ACCEPTED_LIMIT:
        # The oldest half goes (closed connections, mostly: a dict keeps insertion order);
        # clearing it all would also forget connections still in use.
        for old in list(ACCEPTED)[: ACCEPTED_LIMIT // 2]:
            ACCEPTED.pop(old, None)
    ACCEPTED[key] = [accept_ns, arrival_ns, 0, 0, peer, kept[0] if kept else None]


_TCP_INFO = getattr(socket, "TCP_INFO", 11 if sys.platform.startswith("linux") else None)
# struct tcp_info: tcpi_last_data_recv (u32) at byte 52, tcpi_bytes_received (u64) at 128.
_TCP_INFO_LEN: Final = 136
_LAST_DATA_RECV = struct.Struct("<I")
_BYTES_RECEIVED = struct.Struct("<Q")

AcceptFn = Callable[[], tuple[socket.socket, Any]]
#: The peer address of a unix-socket connection in :data:`ACCEPTED`.
UNIX: Final = "unix"


def unix_connection_key(environ: Any) -> int | None:
    """The :data:`ACCEPTED` key of the unix-socket connection a request came on (gunicorn
    hands the socket over in ``gunicorn.socket``), or None."""
    sock = environ.get("gunicorn.socket")
    if isinstance(sock, socket.socket) and sock.family == socket.AF_UNIX:
        return unix_key(sock.fileno())
    return None


def arrival_from_tcp_info(info: bytes, now_ns: int) -> int:
    """Arrival of the bytes already received on an accepted socket, or 0 when none came yet
    (then the request arrives after the accept, and the accept time bounds the wait)."""
    if len(info) < _TCP_INFO_LEN:
        return 0
    if _BYTES_RECEIVED.unpack_from(info, 128)[0] == 0:
        return 0
    last_recv_ms: int = _LAST_DATA_RECV.unpack_from(info, 52)[0]
    arrival = now_ns - last_recv_ms * 1_000_000
    return arrival if arrival > 0 else 0  # never a time before this machine booted


def record_accept(sock: socket.socket, addr: Any, spool_dir: str) -> None:
    """Note one accepted connection. Never raises: the server must go on accepting."""
    try:
        now = time.monotonic_ns()
        arrival = 0
        if _TCP_INFO is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            try:
                arrival = arrival_from_tcp_info(
                    sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_LEN), now
                )
            except OSError:
                arrival = 0
        if isinstance(addr, tuple) and len(addr) >= 2:
            peer, port = str(addr[0]), int(addr[1])
            remember(peer, port, now, arrival)
            server_port = sock.getsockname()[1]
        else:
            # A unix socket (gunicorn behind nginx): no peer address or port. The socket's
            # inode names the connection as the kernel does (unix_diag, /proc/PID/fd), for
            # the sidecar; its fd finds it again from the request (unix_connection_key).
            fd = sock.fileno()
            remember(UNIX, unix_key(fd), now, 0)
            peer, port, server_port = f"unix:{os.fstat(fd).st_ino}", 0, 0
        writer = writer_for(spool_dir)
        if writer is not None:
            writer.write_accept(now, arrival, port, server_port, 0, peer_bytes(peer))
    except Exception:
        logger.debug("worker.accept_not_recorded: the accept hook failed", exc_info=True)


def wrap_accept(accept: AcceptFn, spool_dir: str | None = None) -> AcceptFn:
    """``accept`` that records each accepted connection first."""
    directory = resolve_dir(spool_dir)

    def accept_and_record() -> Any:
        pair = accept()
        # waitress's accept() returns None when another process took the connection
        # (EAGAIN, ECONNABORTED): nothing to record, and nothing to break.
        if pair is not None:
            record_accept(pair[0], pair[1], directory)
        return pair

    accept_and_record.__wrapped__ = accept  # type: ignore[attr-defined]
    return accept_and_record


def arrival_from_socket(sock: object, now_ns: int) -> int:
    """Arrival of the request just read from an accepted TCP socket (``TCP_INFO``), or 0."""
    if _TCP_INFO is None or not isinstance(sock, socket.socket):
        return 0
    try:
        return arrival_from_tcp_info(
            sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, _TCP_INFO_LEN), now_ns
        )
    except OSError:  # not TCP (a unix socket), or already closed
        return 0


def note_request_ready(addr: Any) -> None:
    """The server has a complete request from ``addr`` in hand (waitress queues it now).
    Servers call :data:`note_ready`: this, or its C twin when the accelerator is built."""
    try:
        conn = connection(str(addr[0]), int(addr[1]))
        if conn is not None:
            conn[READY] = time.monotonic_ns()
    except Exception:
        pass


#: What the servers' hooks call for every kept-alive request, in the server's thread: the
#: C twin of :func:`note_request_ready` (less than half its instructions: 1,505 against
#: 3,400 per call, callgrind), which hands anything odd to it.
note_ready: Callable[[Any], None] = (
    speedups.note_ready if speedups is not None else note_request_ready
)


def mark_spool(spool_dir: str | None, capacity: int | None, *, hooked: bool = True) -> None:
    """Open this process's spool now (so the sidecar sees an idle worker); flag it as
    hooked only when accepts are really recorded."""
    writer = writer_for(resolve_dir(spool_dir))
    if writer is None:
        return
    if hooked:
        writer.set_flags(fmt.HEADER_FLAG_ACCEPT_HOOK)
    if capacity:
        writer.set_declared_capacity(capacity)


# gunicorn workers whose accept goes through ``listener.accept()`` in Python.
_GUNICORN_HOOKABLE: Final = ("SyncWorker", "ThreadWorker")


def install_gunicorn(worker: Any, spool_dir: str | None = None) -> bool:
    """Hook a gunicorn worker's listeners; call from ``post_worker_init(worker)``.

    gevent workers accept on their loop, in gevent's ``StreamServer``: that is hooked
    instead (:func:`wsgiwatch.worker.autohook.hook_gevent`). Returns False (and logs why)
    for worker classes that accept elsewhere; the sidecar's kernel view covers those.
    """
    if any(cls.__name__ == "GeventWorker" for cls in type(worker).__mro__):
        from wsgiwatch.worker import autohook  # it imports this module

        return autohook.hook_gevent(resolve_dir(spool_dir))
    kind = type(worker).__name__
    capacity = int(getattr(getattr(worker, "cfg", None), "threads", 1) or 1)
    if kind != "ThreadWorker":
        capacity = 1
    if kind not in _GUNICORN_HOOKABLE:
        logger.info(
            "worker.accept_hook_unavailable: gunicorn worker class %s accepts elsewhere; "
            "the sidecar's kernel view covers it",
            kind,
        )
        mark_spool(spool_dir, None, hooked=False)
        return False
    for listener in worker.sockets:
        # gunicorn's socket wrapper forwards unknown attributes to the real socket; an
        # attribute of its own shadows that for this one wrapper object, nothing else.
        if not hasattr(listener.accept, "__wrapped__"):
            listener.accept = wrap_accept(listener.sock.accept, spool_dir)
    mark_spool(spool_dir, capacity)
    return True


def _noting_add_task(original: Any) -> Any:
    """waitress hands a channel to its thread pool once a request is complete: that is the
    request's arrival, which TCP_INFO cannot give for kept-alive connections."""

    def add_task(channel: Any) -> Any:
        note_ready(getattr(channel, "addr", None) or ("", 0))
        return original(channel)

    return add_task


def serve_waitress(app: Any, *, spool_dir: str | None = None, **kwargs: Any) -> None:
    """``waitress.serve(app, **kwargs)``, with each accept recorded."""
    server = create_waitress_server(app, spool_dir=spool_dir, **kwargs)
    server.run()


def create_waitress_server(app: Any, *, spool_dir: str | None = None, **kwargs: Any) -> Any:
    """``waitress.create_server`` with the accept hook on every listening socket."""
    import waitress.server

    kwargs.pop("_quiet", None)  # a waitress.serve() option that create_server refuses
    server = waitress.server.create_server(app, **kwargs)
    listeners = (
        list(server.map.values())
        if hasattr(server, "effective_listen") and not hasattr(server, "accept")
        else [server]
    )
    for listener in listeners:
        if isinstance(listener, waitress.server.BaseWSGIServer):
            # wasyncore's handle_accept calls self.accept(); shadow it on this instance.
            listener.accept = wrap_accept(listener.accept, spool_dir)
            listener.add_task = _noting_add_task(listener.add_task)
    mark_spool(spool_dir, int(kwargs.get("threads", 4)))
    return server
