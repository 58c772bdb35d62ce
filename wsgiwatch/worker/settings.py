"""What both implementations of WSGIWatch share: their settings, and finding this process's
spool on the first request (then kept in :data:`ready`, where both paths look it up)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.writer import DEFAULT_ACCEPTS, DEFAULT_RING, DEFAULT_SLOTS, SpoolWriter
from wsgiwatch.worker import autohook
from wsgiwatch.worker.call_state import TRUSTED_PROXIES_MAX
from wsgiwatch.worker.internal_errors import internal_error
from wsgiwatch.worker.mod_wsgi import daemon_capacity
from wsgiwatch.worker.process_spool import request_geometry, resolve_dir, writer_for
from wsgiwatch.worker.request_keys import server_software

logger = logging.getLogger("wsgiwatch")

Environ = dict[str, Any]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[Environ, StartResponse], Iterable[bytes]]

#: Spool directory -> this process's writer for it (None: recording is off). Forgotten after
#: a fork: the child opens a spool of its own on its first request.
ready: dict[str, SpoolWriter | None] = {}
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=ready.clear)

_warned_geometry: list[bool] = []


class WatchSettings:
    """The arguments of WSGIWatch, checked once; the subclasses hold them in slots."""

    if not TYPE_CHECKING:  # the subclasses hold the fields (mypy wants them declared here)
        __slots__ = ()
    app: WSGIApp
    _capacity: int | None
    _dir: str
    _dir_given: bool  # spool_dir or $WSGIWATCH_DIR chose it; else a SetEnv may
    _geometry: tuple[int, int, int]
    _trusted_proxies: int

    def __init__(
        self,
        app: WSGIApp,
        *,
        spool_dir: str | None = None,
        capacity: int | None = None,
        trusted_proxies: int = 0,
        slots: int = DEFAULT_SLOTS,
        ring_size: int = DEFAULT_RING,
        accept_events: int = DEFAULT_ACCEPTS,
        accept_hook: bool = True,
    ) -> None:
        """Wrap a WSGI app: ``application = WSGIWatch(application)``.

        ``spool_dir``: where the spool files go (default ``$WSGIWATCH_DIR``, else a private
        per-user directory in ``/dev/shm`` or the temp dir). ``capacity``: how many requests
        one process runs at once (threads), if you want to state it; otherwise the sidecar
        infers it. ``trusted_proxies``: how many front proxies add ``X-Request-Start`` /
        ``X-Queue-Start`` to each request (werkzeug ``ProxyFix`` style); the value the
        outermost of them added is read (only ever as a timestamp). 0, the default: the
        headers are ignored, since any client can send them. ``slots``,
        ``ring_size``, ``accept_events``: the spool's geometry (docs/spool-format.md).
        ``accept_hook``: hook the server this runs in (gunicorn, waitress, cheroot) for
        exact accept and arrival times (:mod:`wsgiwatch.worker.autohook`); ``False``
        leaves the server untouched and the waits to the sidecar's kernel view.
        """
        if not (0 < slots < fmt.NO_SLOT and ring_size > 0 and accept_events > 0):
            raise ValueError("slots (below 65535), ring_size and accept_events must be positive")
        if capacity is not None and capacity < 1:
            raise ValueError("capacity must be positive")
        if not 0 <= trusted_proxies <= TRUSTED_PROXIES_MAX:
            raise ValueError(f"trusted_proxies must be 0 to {TRUSTED_PROXIES_MAX}")
        self.app = app
        self._dir = resolve_dir(spool_dir)
        self._dir_given = bool(spool_dir or os.environ.get("WSGIWATCH_DIR"))
        self._capacity = capacity
        self._trusted_proxies = trusted_proxies
        self._geometry = (slots, ring_size, accept_events)
        request_geometry(self._dir, self._geometry)
        if accept_hook:
            autohook.install(self._dir)

    @property
    def spool_dir(self) -> str:
        return self._dir

    def _first_request(self, environ: Environ) -> SpoolWriter | None:
        """Slow path, once per process: open the spool and note what serves us."""
        chosen = environ.get("WSGIWATCH_DIR")
        if not self._dir_given and isinstance(chosen, str) and chosen and chosen != self._dir:
            # mod_wsgi: Apache's SetEnv arrives in the environ, not in os.environ. (The
            # C path reads ``_dir`` on every request, so it follows.)
            self._dir = chosen
            request_geometry(chosen, self._geometry)
        writer = writer_for(self._dir)
        if writer is not None:
            geometry = (writer.slot_count, writer.ring_capacity, writer.accept_capacity)
            if geometry != self._geometry and not _warned_geometry:
                _warned_geometry.append(True)
                logger.warning(
                    "worker.spool_geometry_differs: the spool in %s was opened with another "
                    "size than this WSGIWatch asks for (two apps, one directory?)",
                    self._dir,
                )
            try:
                writer.note_server(
                    server_software(environ),
                    bool(environ.get("wsgi.multithread")),
                    bool(environ.get("wsgi.multiprocess")),
                )
                capacity = self._capacity or daemon_capacity(environ)
                if capacity:
                    writer.set_declared_capacity(capacity)
            except Exception:
                internal_error(writer)
        ready[self._dir] = writer
        return writer
