"""Two apps mounted at different prefixes in one process, the same PATH_INFO under each:
the route is SCRIPT_NAME + PATH_INFO, whichever was seen first."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from wsgiwatch import WSGIWatch, middleware, process_spool
from wsgiwatch.spool import SpoolReader, list_spools


@pytest.fixture
def own_spool(spool_dir: str) -> Iterator[str]:
    yield spool_dir
    middleware._ready.pop(spool_dir, None)
    writer = process_spool._writers.pop(spool_dir, None)
    if writer is not None:
        writer.close()


def test_same_path_info_under_two_script_names_gets_two_routes(
    own_spool: str, implementation: type[WSGIWatch]
) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b""]

    watched = implementation(app, spool_dir=own_spool)
    # not in the process-wide caches yet
    path_info = f"/same-{os.getpid()}-{implementation.__name__}"
    for script_name in ("/shop", "/blog"):
        environ = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": script_name, "PATH_INFO": path_info}
        watched(environ, lambda status, headers, exc_info=None: None).close()  # type: ignore[attr-defined]
    (path,) = list_spools(own_spool)
    with SpoolReader(path, track=False) as reader:
        routes = [r.route for r in reader.read_records().records]
    assert routes == [f"/shop{path_info}", f"/blog{path_info}"]
