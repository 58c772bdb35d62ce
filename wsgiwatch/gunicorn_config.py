"""Server hooks for ``gunicorn.conf.py``; importing this module changes nothing by itself.

    # gunicorn.conf.py
    from wsgiwatch.gunicorn_config import post_worker_init, worker_abort, worker_exit  # noqa: F401

or ``gunicorn -c python:wsgiwatch.gunicorn_config``. ``post_worker_init`` turns on the accept
hook in every worker (sync and gthread workers), and opens each worker's spool as soon as it
starts, so the sidecar sees idle workers too. ``worker_abort`` and ``worker_exit`` leave a
note beside the worker's spool saying how it ended (aborted after ``--timeout``, or exited)
and which requests were in flight, so the sidecar counts those lost requests with their fate
(``wsgiwatch_lost_requests_total{fate="timed_out"}``); without them a dead worker's fate
reads ``killed``. If you already have these hooks, call
:func:`wsgiwatch.worker.accept_hook.install_gunicorn` and
:func:`wsgiwatch.worker.process_spool.note_fate` from yours.
"""

from __future__ import annotations

from typing import Any

from wsgiwatch.spool.fate import EXITED, TIMED_OUT
from wsgiwatch.worker.accept_hook import install_gunicorn
from wsgiwatch.worker.process_spool import note_fate

__all__ = ["post_worker_init", "worker_abort", "worker_exit"]


def post_worker_init(worker: Any) -> None:
    install_gunicorn(worker)


def worker_abort(worker: Any) -> None:
    """gunicorn's arbiter aborts a worker (SIGABRT) that missed its ``--timeout``."""
    note_fate(TIMED_OUT)


def worker_exit(server: Any, worker: Any) -> None:
    """A worker leaves through its own code (after an abort too: the first note stands)."""
    note_fate(EXITED)
