"""A test app that says who served each request, for the process, hook and live-read tests.

Every response body is ``"<pid> <ppid>\\n"``, so a client knows which worker served it.
Routes (all GET):

- ``/slow/<seconds>``: ``time.sleep`` (blocks a thread, or a whole sync worker);
- ``/gsleep/<seconds>``: ``gevent.sleep``, cooperative (gevent workers only);
- ``/r/<token>``: the path itself becomes the record's route (``environ["wsgiwatch.route"]``),
  so a test can find the record of each request by a unique token, digits included;
  ``?sleep=<seconds>`` makes it slow too;
- anything else: fast.
"""

from __future__ import annotations

import os
import time
from typing import Any

from wsgiwatch import ROUTE_KEY, WSGIWatch


def raw_app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    path = environ.get("PATH_INFO", "")
    parts = path.split("/")
    if path.startswith("/slow/"):
        time.sleep(float(parts[2]))
    elif path.startswith("/gsleep/"):
        import gevent  # only ever served by a gevent worker

        gevent.sleep(float(parts[2]))
    elif path.startswith("/r/"):
        environ[ROUTE_KEY] = path
        query = environ.get("QUERY_STRING", "")
        if query.startswith("sleep="):
            time.sleep(float(query[6:]))
    body = f"{os.getpid()} {os.getppid()}\n".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


# TEST_ACCEPT_HOOK=0: the app as with ``WSGIWatch(app, accept_hook=False)``, for the tests
# of what wsgiwatch sees without its accept hook.
_hook = os.environ.get("TEST_ACCEPT_HOOK") != "0"
application = WSGIWatch(raw_app, accept_hook=_hook)
# The same app behind one front proxy that adds X-Request-Start (trusted_proxies=1).
behind_one_proxy = WSGIWatch(raw_app, trusted_proxies=1, accept_hook=_hook)
# The same app asking for a 16-record ring (used to check the geometry is honoured; last,
# since the last WSGIWatch made for a directory sets the geometry its spool is opened with).
small_ring = WSGIWatch(raw_app, ring_size=16, accept_hook=_hook)
