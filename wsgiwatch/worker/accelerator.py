"""Whether the C accelerator of the per-request path (``wsgiwatch.worker._speedups``) is in use.

It is built at install time when a C compiler is there (``setup.py``); without it, or with
``WSGIWATCH_PURE_PYTHON=1`` in the environment, WSGIWatch runs its pure-Python path, which
writes the same records at a higher cost per request (benchmarks/middleware_overhead.py
measures both; docs/benchmarks.md has the figures).
"""

from __future__ import annotations

import os
from types import ModuleType


def _load() -> ModuleType | None:
    if os.environ.get("WSGIWATCH_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from wsgiwatch.worker import _speedups
    except ImportError:
        return None
    # Its state lives in C globals: one interpreter's. Sub-interpreters (mod_wsgi
    # application groups other than %{GLOBAL}) record in Python.
    return _speedups if _speedups.in_main_interpreter() else None


#: The C module, or None when WSGIWatch records in pure Python.
speedups: ModuleType | None = _load()
