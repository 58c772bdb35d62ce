"""gunicorn config for the accuracy tests (``-c python:support.truth_gunicorn``): the
accept truth of :mod:`support.truth_accept` in every worker, and wsgiwatch's own accept
hook as well when ``ACCURACY_HOOK=1`` (the opt-in setup a user writes in gunicorn.conf.py).
"""

from __future__ import annotations

import os
from typing import Any

from support import truth_accept


def post_worker_init(worker: Any) -> None:
    kind = {"ThreadWorker": "gthread", "SyncWorker": "sync", "GeventWorker": "gevent"}
    truth_accept.install(kind[type(worker).__name__])
    if os.environ.get("ACCURACY_HOOK") == "1":
        from wsgiwatch.gunicorn_config import post_worker_init as hook

        hook(worker)
