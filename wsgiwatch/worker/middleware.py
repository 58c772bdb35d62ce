"""WSGIWatch: the WSGI middleware that records each request into this process's spool.

The per-request work is deliberately plain: two clock reads, a few dict lookups in bounded
caches, one scoreboard write at entry and one ring record at exit (``close()`` of the
response, so streamed bodies count). Anything that goes wrong inside wsgiwatch is counted in
the spool header and swallowed; exceptions of the app itself pass through untouched.

The common case runs in C when the accelerator is built (``_speedups.c``, see
:mod:`.accelerator`): ``WSGIWatch`` then derives from its ``Recorder``. The same logic is in
Python, as :class:`PythonWSGIWatch`, for builds without a compiler; the C code calls back
into Python for what is rare, so each of those exists once. Where each part lives:

- :mod:`.settings`: the arguments, and opening this process's spool on the first request;
- :mod:`.python_path`: the pure-Python ``__call__`` (entry: the scoreboard slot);
- :mod:`.response`: ``start_response`` and the list response, and the record at exit;
- :mod:`.streams`: other responses (iterables, the server's file wrappers);
- :mod:`.request_keys`: environ values into stored bytes, through bounded caches;
- :mod:`.accept_sources`: accept and arrival times (accept hook, mod_wsgi, proxy headers);
- :mod:`.spool_check`: noticing a spool file removed or truncated, and recording on;
- :mod:`.internal_errors`: counting and logging wsgiwatch's own failures;
- :mod:`.bridge`: handing the above to the C path.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from wsgiwatch.worker.accelerator import speedups
from wsgiwatch.worker.bridge import share_with_accelerator
from wsgiwatch.worker.python_path import PythonWSGIWatch
from wsgiwatch.worker.response import ROUTE_KEY
from wsgiwatch.worker.settings import WatchSettings

__all__ = ["ROUTE_KEY", "PythonWSGIWatch", "WSGIWatch"]

if TYPE_CHECKING or speedups is None:
    WSGIWatch = PythonWSGIWatch
else:

    class WSGIWatch(speedups.Recorder, WatchSettings):
        """Records each request of the app it wraps into this process's spool (see
        ``__init__``). Calling it runs the C accelerator's ``Recorder.__call__``."""

        __slots__ = ("_capacity", "_dir_given", "_geometry")


share_with_accelerator()
