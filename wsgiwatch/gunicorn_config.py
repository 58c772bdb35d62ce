"""Server hooks for ``gunicorn.conf.py``; importing this module changes nothing by itself.

    # gunicorn.conf.py
    from wsgiwatch.gunicorn_config import post_worker_init  # noqa: F401

turns on the accept hook in every worker (sync and gthread workers), and opens each worker's
spool as soon as it starts, so the sidecar sees idle workers too. If you already have a
``post_worker_init``, call :func:`wsgiwatch.worker.accept_hook.install_gunicorn` from it.
"""

from __future__ import annotations

from typing import Any

from wsgiwatch.worker.accept_hook import install_gunicorn

__all__ = ["post_worker_init"]


def post_worker_init(worker: Any) -> None:
    install_gunicorn(worker)
