"""The accept hook, installed by ``WSGIWatch`` itself in servers that accept in Python.

Why by default: without it, a wait that starts and ends between two of the sidecar's kernel
polls is never seen, and most real waits (100 to 500 ms behind a slow request) are such
waits; with it, every request's accept and arrival times are exact (tests/e2e/
test_accuracy.py scores both). ``WSGIWatch(app, accept_hook=False)`` turns it off.

How, for each server, and why there (each is a class attribute replaced by a wrapper that
calls the original; nothing else of the server changes):

- gunicorn sync, gthread and gevent workers: ``run`` of the worker class, to hook the
  worker's own listeners (:func:`~wsgiwatch.worker.accept_hook.install_gunicorn`) just before
  its accept loop starts. The app is imported in the worker before ``run`` (or, with
  ``--preload``, in the arbiter before the fork: the class attribute is inherited). gthread's
  ``enqueue_req`` notes when a request is handed to the thread pool (a kept-alive
  connection's next request included): the wait in the pool's queue starts there. gevent
  accepts in ``StreamServer.do_read``, on the loop; each connection's greenlet runs later.
- waitress: ``accept`` and ``add_task`` of ``BaseWSGIServer`` (its I/O thread accepts, reads
  the whole request, then queues it to the thread pool with ``add_task``).
- cheroot: ``ConnectionManager._from_server_socket`` (the accept),
  ``HTTPServer.process_conn`` (a kept-alive connection with a request to read is queued to
  the pool) and ``HTTPConnection.communicate`` (a thread picks a new connection up: if its
  request came after the accept, ``TCP_INFO`` says when).

Only for the versions tested here (:data:`TESTED`); for any other version, or when a method
is missing, the server is left untouched and one log line says so: the sidecar's kernel
view still sees waits, less exactly. Installing is idempotent and never raises.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
import time
from collections.abc import Callable
from typing import Any, Final

from wsgiwatch.worker.accept_hook import (
    ARRIVAL,
    READY,
    USES,
    arrival_from_socket,
    connection,
    install_gunicorn,
    mark_spool,
    note_ready,
    record_accept,
)

logger = logging.getLogger("wsgiwatch")

#: Server -> major versions whose internals the hook was tested against.
TESTED: Final[dict[str, tuple[int, ...]]] = {
    "gunicorn": (27,),
    "gevent": (26,),
    "waitress": (3,),
    "cheroot": (11,),
}
#: Marks our wrappers, so a second install (another WSGIWatch, a fork) does nothing.
_MARK: Final = "_wsgiwatch_hook"

#: The spool directory of the first WSGIWatch that installed the hook in this process.
_state: dict[str, Any] = {"dir": None, "announced": set(), "marked_pid": 0}


def install(spool_dir: str) -> list[str]:
    """Hook every known server already imported in this process; returns what was hooked
    now (empty when there was nothing to do). Never raises."""
    if _state["dir"] is None:
        _state["dir"] = spool_dir
    done: list[str] = []
    for name, installer in _INSTALLERS:
        if name not in sys.modules:
            continue
        try:
            if installer():
                done.append(name)
        except Exception:  # never break the app for a hook
            logger.warning("worker.accept_hook_failed: %s; kernel view only", name, exc_info=True)
    if done:
        logger.info(
            "worker.accept_hook_installed: %s (exact accept and arrival times; "
            "WSGIWatch(app, accept_hook=False) turns it off)",
            ", ".join(done),
        )
    return done


def _version(module: str) -> tuple[int, ...]:
    mod = sys.modules.get(module)
    text = str(getattr(mod, "__version__", "") or "")
    if not text:
        try:
            from importlib.metadata import version

            text = version(module)
        except Exception:
            return ()
    parts = []
    for piece in text.split(".")[:2]:
        digits = "".join(c for c in piece if c.isdigit())
        parts.append(int(digits or 0))
    return tuple(parts)


def _known(server: str, *needed: tuple[Any, str]) -> bool:
    """The server's version is tested and every (object, attribute) needed exists;
    otherwise say once why it stays unhooked."""
    version = _version(server)
    missing = [name for obj, name in needed if not callable(getattr(obj, name, None))]
    if version[:1] and version[0] in TESTED[server] and not missing:
        return True
    if server not in _state["announced"]:
        _state["announced"].add(server)
        logger.info(
            "worker.accept_hook_skipped: %s %s is not a version the hook was tested with "
            "(%s)%s; its waits come from the sidecar's kernel view",
            server,
            ".".join(map(str, version)) or "(unknown version)",
            ", ".join(f"{v}.x" for v in TESTED[server]),
            f", or lacks {', '.join(missing)}" if missing else "",
        )
    return False


def _wrap(cls: Any, name: str, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> bool:
    """Replace ``cls.name`` by ``make(original)`` once; False if already ours."""
    original = cls.__dict__.get(name, getattr(cls, name))
    if getattr(original, _MARK, False):
        return False
    wrapper = functools.wraps(original)(make(original))
    setattr(wrapper, _MARK, True)
    setattr(cls, name, wrapper)
    return True


def _spool_dir() -> str:
    return str(_state["dir"])


def _mark_once(capacity: int | None) -> None:
    """Flag this process's spool as hooked (once per process: a fork opens a new one)."""
    if _state["marked_pid"] != os.getpid():
        _state["marked_pid"] = os.getpid()
        mark_spool(_spool_dir(), capacity)


# -- gunicorn --------------------------------------------------------------------------------


def _gunicorn() -> bool:
    classes = []
    for module, cls_name in (
        ("gunicorn.workers.sync", "SyncWorker"),
        ("gunicorn.workers.gthread", "ThreadWorker"),
        ("gunicorn.workers.ggevent", "GeventWorker"),
    ):
        mod = sys.modules.get(module)
        cls = getattr(mod, cls_name, None)
        if cls is not None:
            classes.append(cls)
    if not classes or not _known("gunicorn", *((c, "run") for c in classes)):
        return False
    hooked = False
    for cls in classes:
        hooked |= _wrap(cls, "run", _running_hooked)
        if cls.__name__ == "ThreadWorker" and _known("gunicorn", (cls, "enqueue_req")):
            hooked |= _wrap(cls, "enqueue_req", _noting_enqueue)
    return hooked


def _running_hooked(run: Callable[..., Any]) -> Callable[..., Any]:
    def hooked_run(self: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            install_gunicorn(self, _spool_dir())
        except Exception:
            logger.warning("worker.accept_hook_failed: not installed in this worker", exc_info=True)
        return run(self, *args, **kwargs)

    return hooked_run


def _noting_enqueue(enqueue: Callable[..., Any]) -> Callable[..., Any]:
    def enqueue_req(self: Any, conn: Any) -> Any:
        # A new connection is queued at once, before its request may have come (a thread
        # then waits for it): only a kept-alive or deferred one is queued because its
        # bytes are there. The first request's arrival comes from TCP_INFO instead.
        if getattr(conn, "initialized", False) or getattr(conn, "data_ready", False):
            note_ready(getattr(conn, "client", None) or ("", 0))
        return enqueue(self, conn)

    return enqueue_req


def hook_gevent(spool_dir: str) -> bool:
    """Record the accepts of gevent's ``StreamServer`` (where a gunicorn gevent worker
    accepts, on its loop; each connection's greenlet runs later). False, and the spool
    says unhooked, for a gevent version the hook was not tested with."""
    from gevent import server

    if _state["dir"] is None:
        _state["dir"] = spool_dir
    if not _known("gevent", (server.StreamServer, "do_read")):
        mark_spool(spool_dir, None, hooked=False)
        return False
    _wrap(server.StreamServer, "do_read", _recording_do_read)
    _mark_once(None)
    return True


def _recording_do_read(do_read: Callable[..., Any]) -> Callable[..., Any]:
    def recording_do_read(self: Any) -> Any:
        pair = do_read(self)
        if pair:
            record_accept(pair[0], pair[1], _spool_dir())
        return pair

    return recording_do_read


# -- waitress --------------------------------------------------------------------------------


def _waitress() -> bool:
    from waitress import server

    base = server.BaseWSGIServer
    if not _known("waitress", (base, "accept"), (base, "add_task")):
        return False
    hooked = _wrap(base, "accept", _recording_waitress_accept)
    return _wrap(base, "add_task", _noting_add_task) or hooked


def _recording_waitress_accept(accept: Callable[..., Any]) -> Callable[..., Any]:
    def recording_accept(self: Any) -> Any:
        pair = accept(self)
        # None when another process took the connection (EAGAIN, ECONNABORTED). A server
        # made by serve_waitress records its accepts itself (an attribute of the instance).
        if pair is not None and "accept" not in vars(self):
            _mark_once(getattr(getattr(self, "adj", None), "threads", None))
            record_accept(pair[0], pair[1], _spool_dir())
        return pair

    return recording_accept


def _noting_add_task(add_task: Callable[..., Any]) -> Callable[..., Any]:
    def noting_add_task(self: Any, channel: Any) -> Any:
        note_ready(getattr(channel, "addr", None) or ("", 0))
        return add_task(self, channel)

    return noting_add_task


# -- cheroot ---------------------------------------------------------------------------------


def _cheroot() -> bool:
    from cheroot import connections, server

    manager, http, conn = connections.ConnectionManager, server.HTTPServer, server.HTTPConnection
    needed = ((manager, "_from_server_socket"), (http, "process_conn"), (conn, "communicate"))
    if not _known("cheroot", *needed):
        return False
    hooked = _wrap(manager, "_from_server_socket", _recording_cheroot_accept)
    hooked = _wrap(conn, "communicate", _arrival_at_pickup) or hooked
    return _wrap(http, "process_conn", _noting_process_conn) or hooked


def _recording_cheroot_accept(accept: Callable[..., Any]) -> Callable[..., Any]:
    def recording_from_server_socket(self: Any, server_socket: Any) -> Any:
        conn = accept(self, server_socket)
        if conn is not None:
            pool = getattr(getattr(self, "server", None), "requests", None)
            _mark_once(getattr(pool, "min", None))
            addr = (getattr(conn, "remote_addr", None), getattr(conn, "remote_port", None))
            record_accept(conn.socket, addr if addr[0] else None, _spool_dir())
        return conn

    return recording_from_server_socket


def _cheroot_entry(conn: Any) -> list[Any] | None:
    """The hook's entry of a cheroot connection, or None (no port: a unix socket)."""
    port = getattr(conn, "remote_port", None)
    if type(port) is not int:
        return None
    return connection(str(getattr(conn, "remote_addr", "")), port)


def _noting_process_conn(process_conn: Callable[..., Any]) -> Callable[..., Any]:
    def noting_process_conn(self: Any, conn: Any) -> Any:
        # A new connection is handed over right after the accept, before its request may
        # have come; a kept-alive one only once its next request is readable (its first
        # request has been through the middleware: the hook's entry counts it).
        entry = _cheroot_entry(conn)
        if entry is not None and entry[USES]:
            entry[READY] = time.monotonic_ns()
        return process_conn(self, conn)

    return noting_process_conn


def _arrival_at_pickup(communicate: Callable[..., Any]) -> Callable[..., Any]:
    def communicate_noting_arrival(self: Any) -> Any:
        # A new connection's request may have come after the accept (TCP_INFO had nothing
        # then), and cheroot hands the app no socket to ask later: ask it now, as a thread
        # picks the connection up. One getsockopt, for those connections only.
        entry = _cheroot_entry(self)
        if entry is not None and not (entry[ARRIVAL] or entry[USES] or entry[READY]):
            arrival = arrival_from_socket(getattr(self, "socket", None), time.monotonic_ns())
            if arrival:
                entry[READY] = arrival
        return communicate(self)

    return communicate_noting_arrival


# Module name (the server is hooked only once it is imported) -> installer.
_INSTALLERS: Final[tuple[tuple[str, Callable[[], bool]], ...]] = (
    ("gunicorn.workers", _gunicorn),
    ("waitress.server", _waitress),
    ("cheroot.connections", _cheroot),
)
