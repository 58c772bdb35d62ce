"""Two apps mounted at different prefixes in one process, the same PATH_INFO under each:
the route is SCRIPT_NAME + PATH_INFO, whichever was seen first."""

from __future__ import annotations

import os
from typing import Any

from wsgiwatch import WSGIWatch
from wsgiwatch.spool.reader import SpoolReader, list_spools
from wsgiwatch.worker.routes import fold_path


def test_same_path_info_under_two_script_names_gets_two_routes(
    watch_dir: str, implementation: type[WSGIWatch]
) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        start_response("200 OK", [])
        return [b""]

    watched = implementation(app, spool_dir=watch_dir)
    # not in the process-wide caches yet
    path_info = f"/same-{os.getpid()}-{implementation.__name__}"
    for script_name in ("/shop", "/blog"):
        environ = {"REQUEST_METHOD": "GET", "SCRIPT_NAME": script_name, "PATH_INFO": path_info}
        watched(environ, lambda status, headers, exc_info=None: None).close()  # type: ignore[attr-defined]
    (path,) = list_spools(watch_dir)
    with SpoolReader(path, track=False) as reader:
        routes = [r.route for r in reader.read_records().records]
    folded = fold_path(path_info)  # the pid and class name: folded to :token
    assert routes == [f"/shop{folded}", f"/blog{folded}"]
