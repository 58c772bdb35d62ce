"""A plain WSGI app with wsgiwatch: import, wrap. From the repository root:

    gunicorn -c examples/gunicorn.conf.py examples.wsgi:application
    python examples/waitress_serve.py

For Flask and Django apps see flask/wsgi.py and django/exampleproject/wsgi.py: they also
label each request with its route template.
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
