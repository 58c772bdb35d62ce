"""Handing the C accelerator the Python side's caches and slow paths, so each exists once:
the C path reads the same cache dicts and calls these functions for what is rare (first
request, odd environs, accept sources, streams, file wrappers, logging)."""

from __future__ import annotations

from wsgiwatch.worker import (
    accept_sources,
    internal_errors,
    request_keys,
    settings,
    spool_check,
    streams,
    uwsgi_identity,
)
from wsgiwatch.worker.accelerator import speedups
from wsgiwatch.worker.python_path import PythonWSGIWatch


def share_with_accelerator() -> None:
    """Called when :mod:`.middleware` is imported; tests that swap one of these (to break
    it) call it again. Reads the module attributes now, so a swapped one is what C gets."""
    if speedups is None:
        return
    speedups.configure(
        ready=settings.ready,
        peers=request_keys.peers,
        peer_bytes=request_keys.encode_peer,
        ports=request_keys.ports,
        port_number=request_keys.port_number,
        path_bytes=request_keys.path_bytes,
        route_for_path=request_keys.route_for_path,
        method_codes=request_keys.METHOD_CODES,
        odd_keys=request_keys.odd_request_keys,
        accepted=accept_sources.ACCEPTED,
        accept_sources=accept_sources.accept_sources,
        templates=request_keys.templates.entries,
        template_bytes=request_keys.templates.get,
        proxy_wall_ns=accept_sources.proxy_wall_ns,
        statuses=request_keys.statuses,
        status_code=request_keys.status_code,
        wrap_other=streams.wrap_other,
        python_call=PythonWSGIWatch.__call__,
        log_error=internal_errors.log_internal_error,
        check_spool=spool_check.check_spool,
        connection_port=uwsgi_identity.connection_port,
    )
