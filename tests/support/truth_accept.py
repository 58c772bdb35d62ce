"""Ground truth for the accuracy tests: when each connection was really accepted.

This is the tests' own yardstick, apart from wsgiwatch's accept hook: it patches, in the
server process only, the object each server builds right after ``accept()`` returns (a
connection or channel object, or the gevent accept itself), and keeps the monotonic time of
that moment by peer address and port. The accuracy app (``apps.accuracy``) hands it back to
the client in a response header. It sits at another layer than wsgiwatch's hook (which
wraps the listener's ``accept``), so the two never replace each other.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

#: (peer address, peer port) -> monotonic ns of the accept (the latest one for that peer).
ACCEPTED: dict[tuple[str, int], int] = {}


def _note(addr: Any) -> None:
    if isinstance(addr, tuple) and len(addr) >= 2:
        if len(ACCEPTED) > 100_000:
            ACCEPTED.clear()
        ACCEPTED[(str(addr[0]), int(addr[1]))] = time.monotonic_ns()


def accept_ns(addr: str, port: int) -> int:
    return ACCEPTED.get((addr, port), 0)


def _after_accept(cls: Any, name: str, addr_of: Callable[..., Any]) -> None:
    """Wrap ``cls.name`` so the peer of its call is noted first."""
    original = getattr(cls, name)
    if getattr(original, "_truth", False):
        return

    @functools.wraps(original)
    def noting(*args: Any, **kwargs: Any) -> Any:
        _note(addr_of(*args, **kwargs))
        return original(*args, **kwargs)

    noting._truth = True  # type: ignore[attr-defined]
    setattr(cls, name, noting)


def install(kind: str) -> None:
    """Start noting accepts in this server process (``kind``: the server's name)."""
    if kind == "gthread":
        from gunicorn.workers import gthread

        # TConn(cfg, sock, client, server) is built right after listener.accept().
        _after_accept(gthread.TConn, "__init__", lambda self, cfg, sock, client, *a: client)
    elif kind == "sync":
        from gunicorn.workers import sync

        # SyncWorker.handle(listener, client, addr) is called right after accept().
        _after_accept(sync.SyncWorker, "handle", lambda self, listener, client, addr: addr)
    elif kind == "gevent":
        from gevent import server

        original = server.StreamServer.do_read
        if getattr(original, "_truth", False):
            return

        @functools.wraps(original)
        def do_read(self: Any) -> Any:
            pair = original(self)
            if pair:
                _note(pair[1])
            return pair

        do_read._truth = True  # type: ignore[attr-defined]
        server.StreamServer.do_read = do_read
    elif kind == "waitress":
        from waitress import channel

        # HTTPChannel(server, sock, addr, adj, map) is built in handle_accept.
        _after_accept(
            channel.HTTPChannel, "__init__", lambda self, server, sock, addr, *a, **k: addr
        )
    elif kind == "cheroot":
        from cheroot import server as cheroot_server

        # HTTPConnection(server, sock, makefile) is built right after accept(); its peer
        # address is set on it only afterwards, so ask the socket.
        _after_accept(
            cheroot_server.HTTPConnection,
            "__init__",
            lambda self, server, sock, *a, **k: sock.getpeername(),
        )
    else:
        raise ValueError(f"no accept truth for {kind!r}")
