"""Wrapping an app is two lines: import, wrap. Serve ``examples.wsgi:application``.

gunicorn -c examples/gunicorn.conf.py examples.wsgi:application
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from wsgiwatch import WSGIWatch


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    """A stand-in for your app: /report is slow, everything else is fast."""
    if environ.get("PATH_INFO") == "/report":
        time.sleep(2.0)  # a slow report, an upstream call, a big upload...
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok\n"]


application = WSGIWatch(app)
