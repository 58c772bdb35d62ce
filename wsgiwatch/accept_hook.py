"""The accept hook's public import path (``from wsgiwatch.accept_hook import serve_waitress``).

The hook lives with the rest of the worker side, in :mod:`wsgiwatch.worker.accept_hook`.
"""

from wsgiwatch.worker.accept_hook import (
    create_waitress_server,
    install_gunicorn,
    serve_waitress,
    wrap_accept,
)

__all__ = ["create_waitress_server", "install_gunicorn", "serve_waitress", "wrap_accept"]
