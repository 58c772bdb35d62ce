"""When a request was accepted and when it arrived, from whichever source this request has:
the opt-in accept hook (:mod:`.accept_hook`), Apache mod_wsgi's ``request_start``, or a front
proxy's ``X-Request-Start`` / ``X-Queue-Start`` header (parsed by :mod:`.arrival`).

Most requests have none of them, and both paths check for that with three dict lookups
before calling anything here.
"""

from __future__ import annotations

import time
from typing import Any, Final

from wsgiwatch.spool import layout as fmt
from wsgiwatch.worker import accept_hook
from wsgiwatch.worker.accept_hook import arrival_from_socket
from wsgiwatch.worker.arrival import parse_mod_wsgi_time, parse_proxy_header, wall_to_monotonic_ns
from wsgiwatch.worker.call_state import PROXY_PENDING

Environ = dict[str, Any]

MOD_WSGI_START: Final = "mod_wsgi.request_start"
X_REQUEST_START: Final = "HTTP_X_REQUEST_START"
X_QUEUE_START: Final = "HTTP_X_QUEUE_START"
#: The accept hook's connections: the same dict; the hook only ever mutates it in place.
ACCEPTED: Final = accept_hook.ACCEPTED

_monotonic_ns = time.monotonic_ns


def accept_sources(
    environ: Environ, peer: str, port: int, proxy_headers: bool
) -> tuple[int, int, int, int]:
    """(accept_ns, arrival_ns, source, flags) from the accept hook or the server's keys."""
    accept = arrival = source = flags = 0
    conn = ACCEPTED.get((peer, port)) if ACCEPTED else None
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
    elif MOD_WSGI_START in environ:
        now_wall = time.time_ns()
        started = parse_mod_wsgi_time(environ[MOD_WSGI_START], now_wall)
        if started:
            accept = wall_to_monotonic_ns(started, now_wall, _monotonic_ns())
            source = fmt.SOURCE_MOD_WSGI
    if proxy_headers and (X_REQUEST_START in environ or X_QUEUE_START in environ):
        flags |= PROXY_PENDING  # parsed at exit, off the path to the app
    return accept, arrival, source, flags


def proxy_wall_ns(environ: Environ) -> int:
    """The front proxy's time for this request, wall-clock ns (0: none or not believable)."""
    header = environ.get(X_REQUEST_START) or environ.get(X_QUEUE_START)
    if not isinstance(header, str):
        return 0
    return parse_proxy_header(header, time.time_ns()) or 0
