"""What both implementations of WSGIWatch share: their settings, and finding this process's
spool on the first request (then kept in :data:`ready`, where both paths look it up)."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.writer import DEFAULT_ACCEPTS, DEFAULT_RING, DEFAULT_SLOTS, SpoolWriter
from wsgiwatch.worker.internal_errors import internal_error
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
    _geometry: tuple[int, int, int]
    _proxy_headers: bool

    def __init__(
        self,
        app: WSGIApp,
        *,
        spool_dir: str | None = None,
        capacity: int | None = None,
        proxy_headers: bool = True,
        slots: int = DEFAULT_SLOTS,
        ring_size: int = DEFAULT_RING,
        accept_events: int = DEFAULT_ACCEPTS,
    ) -> None:
        """Wrap a WSGI app: ``application = WSGIWatch(application)``.

        ``spool_dir``: where the spool files go (default ``$WSGIWATCH_DIR``, else a private
        per-user directory in ``/dev/shm`` or the temp dir). ``capacity``: how many requests
        one process runs at once (threads), if you want to state it; otherwise the sidecar
        infers it. ``proxy_headers``: read ``X-Request-Start`` / ``X-Queue-Start`` from a
        front proxy (only ever a timestamp; never stored otherwise). ``slots``,
        ``ring_size``, ``accept_events``: the spool's geometry (docs/spool-format.md).
        """
        if not (0 < slots < fmt.NO_SLOT and ring_size > 0 and accept_events > 0):
            raise ValueError("slots (below 65535), ring_size and accept_events must be positive")
        if capacity is not None and capacity < 1:
            raise ValueError("capacity must be positive")
        self.app = app
        self._dir = resolve_dir(spool_dir)
        self._capacity = capacity
        self._proxy_headers = proxy_headers
        self._geometry = (slots, ring_size, accept_events)
        request_geometry(self._dir, self._geometry)

    @property
    def spool_dir(self) -> str:
        return self._dir

    def _first_request(self, environ: Environ) -> SpoolWriter | None:
        """Slow path, once per process: open the spool and note what serves us."""
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
                if self._capacity:
                    writer.set_declared_capacity(self._capacity)
            except Exception:
                internal_error(writer)
        ready[self._dir] = writer
        return writer
