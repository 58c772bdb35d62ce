"""A test app whose answer says when it began, for the deployment tests' client truth.

The body is one JSON object: the serving ``pid``, ``entry_ns`` (``time.monotonic_ns()`` as the
app began; CLOCK_MONOTONIC is one clock for every process here, so a client compares it with
its own send time directly), and the ``mod_wsgi.*`` start times when mod_wsgi gave them
(what mod_wsgi itself says about the daemon socket's backlog).

Routes (all GET): ``/r/<token>`` makes the path the record's route
(``environ["wsgiwatch.route"]``), so a test finds each request's record by a unique token
even where the record has no client port (behind a proxy); ``?sleep=<seconds>`` makes it
slow.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any

from wsgiwatch import ROUTE_KEY, WSGIWatch

MOD_WSGI_KEYS = (
    "mod_wsgi.queue_start",
    "mod_wsgi.daemon_start",
    "mod_wsgi.request_start",
    "mod_wsgi.application_start",
)


def raw_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    entry_ns = time.monotonic_ns()
    entry_wall_ns = time.time_ns()
    path = environ.get("PATH_INFO", "")
    if path.startswith("/r/"):
        environ[ROUTE_KEY] = path
    query = environ.get("QUERY_STRING", "")
    if query.startswith("sleep="):
        time.sleep(float(query[6:]))
    answer = {
        "pid": os.getpid(),
        "entry_ns": entry_ns,
        "entry_wall_ns": entry_wall_ns,
        "mod_wsgi": {k[9:]: str(environ[k]) for k in MOD_WSGI_KEYS if k in environ},
        "request_start_header": environ.get("HTTP_X_REQUEST_START"),
    }
    body = json.dumps(answer).encode()
    start_response(
        "200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    )
    return [body]


#: Behind one front proxy (nginx) whose X-Request-Start it believes; under Apache no header
#: comes, and mod_wsgi's own times are read whatever this says.
# TEST_ACCEPT_HOOK=0: as with ``WSGIWatch(app, accept_hook=False)`` (the hook is on by
# default), for the tests of what the kernel view or a proxy's stamp give on their own.
application = WSGIWatch(
    raw_app, trusted_proxies=1, accept_hook=os.environ.get("TEST_ACCEPT_HOOK") != "0"
)
