"""wsgiwatch: see WSGI requests that stall behind other requests in the same worker process.

``application = WSGIWatch(application)`` records each request into a per-process spool;
``wsgiwatch sidecar`` reads the spools, joins them with the kernel's view of the sockets, and
serves Prometheus metrics on head-of-line blocking.
"""

from wsgiwatch.errors import SpoolFormatError, WsgiwatchError
from wsgiwatch.worker.middleware import ROUTE_KEY, WSGIWatch

__all__ = ["ROUTE_KEY", "SpoolFormatError", "WSGIWatch", "WsgiwatchError", "__version__"]
__version__ = "0.1.0.dev0"
