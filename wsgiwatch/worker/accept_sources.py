"""When a request was accepted and when it arrived, from whichever source this request has:
the opt-in accept hook (:mod:`.accept_hook`), Apache mod_wsgi's ``request_start``, or a front
proxy's ``X-Request-Start`` / ``X-Queue-Start`` header (parsed by :mod:`.arrival`).

Most requests have none of them, and both paths check for that with three dict lookups
before calling anything here.

Trust and plausibility. Any client can send ``X-Request-Start``, so the header is read only
when the operator says how many proxies in front of the server add it
(``trusted_proxies``, as werkzeug's ``ProxyFix`` counts them): the value the outermost of
those added is used, and whatever a client sent before it is ignored. A time that cannot be
right is refused and counted in the spool header (``times_rejected``), never used: one from
before this machine booted (``CLOCK_MONOTONIC`` would go negative: a fresh machine and an
hour-old ``mod_wsgi.request_start``), more than an hour old, more than a second in the
future, or unparsable.
"""

from __future__ import annotations

import time
from typing import Any, Final

from wsgiwatch.spool import layout as fmt
from wsgiwatch.worker import accept_hook
from wsgiwatch.worker.accept_hook import (
    ACCEPT,
    ARRIVAL,
    READY,
    USES,
    arrival_from_socket,
    connection,
)
from wsgiwatch.worker.arrival import parse_proxy_header
from wsgiwatch.worker.call_state import (
    PROXY_PENDING,
    TIME_REJECTED,
    TRUSTED_PROXIES_MAX,
    TRUSTED_PROXIES_SHIFT,
)
from wsgiwatch.worker.mod_wsgi import mod_wsgi_times

Environ = dict[str, Any]

MOD_WSGI_START: Final = "mod_wsgi.request_start"
X_REQUEST_START: Final = "HTTP_X_REQUEST_START"
X_QUEUE_START: Final = "HTTP_X_QUEUE_START"
#: The accept hook's connections: the same dict; the hook only ever mutates it in place.
ACCEPTED: Final = accept_hook.ACCEPTED
#: What :func:`proxy_wall_ns` gives for a header that is there but not believable.
REJECTED: Final = -1

_monotonic_ns = time.monotonic_ns


def accept_sources(
    environ: Environ, peer: str, port: int, trusted_proxies: int
) -> tuple[int, int, int, int]:
    """(accept_ns, arrival_ns, source, flags) from the accept hook or the server's keys.
    ``flags`` may carry TIME_REJECTED, which the caller counts and drops."""
    accept = arrival = source = flags = 0
    conn = connection(peer, port) if ACCEPTED else None
    if conn is None and not port and ACCEPTED:  # a unix socket: found by its fd
        unix = accept_hook.unix_connection_key(environ)
        conn = connection(accept_hook.UNIX, unix) if unix is not None else None
    if conn is not None:
        accept, arrival, uses, ready = conn[ACCEPT], conn[ARRIVAL], conn[USES], conn[READY]
        conn[USES] = uses + 1
        conn[READY] = 0
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
        accept, arrival, apache_wall = mod_wsgi_times(environ, time.time_ns(), _monotonic_ns())
        if accept:
            source = fmt.SOURCE_MOD_WSGI
        else:  # unparsable, too old, or before this machine booted
            flags |= TIME_REJECTED
        if apache_wall:  # daemon mode: Apache's own start is the front of the line
            flags |= PROXY_PENDING
    if trusted_proxies and (X_REQUEST_START in environ or X_QUEUE_START in environ):
        # parsed at exit, off the path to the app; the count of trusted proxies goes along
        flags |= PROXY_PENDING | (
            min(trusted_proxies, TRUSTED_PROXIES_MAX) << TRUSTED_PROXIES_SHIFT
        )
    return accept, arrival, source, flags


def proxy_wall_ns(environ: Environ, flags: int) -> int:
    """The front of the line for this request, wall-clock ns: a trusted front proxy's time,
    else (mod_wsgi daemon mode) when Apache read the request. :data:`REJECTED` when the
    header is there but not believable (the caller counts it), 0 when there is none."""
    trusted = (flags >> TRUSTED_PROXIES_SHIFT) & TRUSTED_PROXIES_MAX
    header = (environ.get(X_REQUEST_START) or environ.get(X_QUEUE_START)) if trusted else None
    if not header:
        return mod_wsgi_times(environ, time.time_ns(), _monotonic_ns())[2]
    if not isinstance(header, str):
        return REJECTED
    # One value per proxy that added one, comma-separated, the nearest proxy's last. The
    # outermost trusted proxy's is the trusted-th from the end; anything before it may
    # come from the client. (Apache's "t=... D=..." is one value.)
    values = header.split(",")
    value = values[-trusted] if len(values) >= trusted else values[0]
    now_wall = time.time_ns()
    wall = parse_proxy_header(value, now_wall)
    if wall is None or wall <= now_wall - _monotonic_ns():  # garbage, too old, before boot
        return REJECTED
    return wall
