"""The app ``wsgiwatch demo`` serves: one slow route among fast ones, wrapped in WSGIWatch."""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from wsgiwatch import WSGIWatch

SLOW_SECONDS = 1.5


def app(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    path = environ.get("PATH_INFO", "")
    if path == "/report":
        environ["wsgiwatch.route"] = "/report"
        time.sleep(SLOW_SECONDS)  # a slow report: a big query, an upstream call
        body = b"report ready\n"
    elif path.startswith("/product/"):
        environ["wsgiwatch.route"] = "/product/<id>"
        time.sleep(0.002)
        body = b"product\n"
    else:
        environ["wsgiwatch.route"] = "/"
        body = b"home\n"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


application = WSGIWatch(app)
