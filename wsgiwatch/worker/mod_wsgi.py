"""What mod_wsgi says about a request's way to the app, as the spool records it.

mod_wsgi puts the request's start times in the environ (floats of epoch seconds in 6.x,
microsecond strings in 4.x as Debian ships it; :func:`wsgiwatch.worker.arrival.parse_mod_wsgi_time`
reads both):

- ``request_start``: an Apache child read the request line (the front of the line);
- ``queue_start`` (daemon mode): that child began handing it to the daemon process group,
  i.e. connected to the daemon's unix socket;
- ``daemon_start`` (daemon mode): a daemon thread accepted it from that socket.

A daemon process accepts only when one of its threads is free, so ``queue_start`` to
``daemon_start`` is time in the daemon socket's kernel backlog: healthy queueing, never
head-of-line blocking. In the record it becomes ``arrival_ns`` = ``queue_start`` (the bytes
reached the daemon's socket) and ``accept_ns`` = ``daemon_start``, so the sidecar's phases
come out as backlog = accept - arrival and in-process = entry - accept; ``request_start``
goes where a front proxy's time goes (``proxy_wall_ns``): Apache's own share.
In embedded mode (no daemon times) ``request_start`` is the accept time, as before.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Final

from wsgiwatch.worker.arrival import parse_mod_wsgi_time, wall_to_monotonic_ns

REQUEST_START: Final = "mod_wsgi.request_start"
QUEUE_START: Final = "mod_wsgi.queue_start"
DAEMON_START: Final = "mod_wsgi.daemon_start"


def mod_wsgi_times(
    environ: Mapping[str, object], now_wall_ns: int, now_mono_ns: int
) -> tuple[int, int, int]:
    """``(accept_ns, arrival_ns, request_start_wall_ns)``: monotonic accept (daemon_start,
    else request_start) and arrival (queue_start) times, 0 where unknown, and
    request_start's wall time (0 if unknown). Never raises."""
    try:
        request = parse_mod_wsgi_time(environ.get(REQUEST_START), now_wall_ns) or 0
        queue = parse_mod_wsgi_time(environ.get(QUEUE_START), now_wall_ns) or 0
        daemon = parse_mod_wsgi_time(environ.get(DAEMON_START), now_wall_ns) or 0
    except Exception:  # a Mapping whose get() raises
        return 0, 0, 0
    if daemon and queue and daemon < queue:  # one clock, one host: cannot be; trust neither
        queue = daemon = 0
    if queue and request and queue < request:
        request = 0
    accepted = daemon or (request if not queue else 0)
    accept_ns = wall_to_monotonic_ns(accepted, now_wall_ns, now_mono_ns) if accepted else 0
    arrival_ns = wall_to_monotonic_ns(queue, now_wall_ns, now_mono_ns) if queue else 0
    if accept_ns <= 0 or arrival_ns < 0:  # before this machine booted: cannot be right
        return 0, 0, 0
    return accept_ns, arrival_ns, request if (queue or daemon) else 0


def daemon_capacity(environ: Mapping[str, object]) -> int | None:
    """Requests a mod_wsgi daemon process runs at once: its ``threads``, as mod_wsgi's own
    module says (``mod_wsgi.threads_per_process``); None outside daemon mode."""
    if not environ.get("mod_wsgi.process_group"):
        return None  # embedded mode, or not mod_wsgi: Apache's own workers, unknown here
    module = sys.modules.get("mod_wsgi")
    threads = getattr(module, "threads_per_process", None)
    return threads if isinstance(threads, int) and threads > 0 else None
