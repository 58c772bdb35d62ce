"""A server that releases a list response without calling ``close()`` (bjoern does, for a
one-item list, against PEP 3333): the record is written when the response is released,
flagged "no close seen", and its scoreboard slot is freed; a response that was closed is
recorded once, unflagged. Both implementations."""

from __future__ import annotations

import gc
from typing import Any

from support.middleware_support import StartResponse, environ_for, read_spools

from wsgiwatch.spool import layout as fmt
from wsgiwatch.worker.middleware import WSGIWatch


def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Length", "2")])
    return [b"ok"]


def test_a_released_list_response_is_recorded_once(implementation: type, watch_dir: str) -> None:
    watched = WSGIWatch(app, spool_dir=watch_dir)
    response = watched(environ_for("/dropped"), StartResponse())
    (body,) = list(response)  # what bjoern does: take the one item...
    assert body == b"ok"
    del response  # ... and release the list, never calling close()
    gc.collect()
    closed = watched(environ_for("/closed"), StartResponse())
    list(closed)
    closed.close()  # type: ignore[attr-defined]
    del closed
    gc.collect()
    (spool,) = read_spools(watch_dir)
    by_route = {r.route: r for r in spool.records}
    assert len(spool.records) == 2
    assert by_route["/dropped"].flags & fmt.FLAG_NO_CLOSE_SEEN
    assert by_route["/dropped"].bytes_sent == 2
    assert not by_route["/closed"].flags & fmt.FLAG_NO_CLOSE_SEEN
    assert spool.busy == []  # no slot left taken
