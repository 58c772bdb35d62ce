"""bjoern, a WSGI server in C on libev: one process, one thread, the app called from its
event loop. While the app runs, the loop accepts nothing: a burst waits in the kernel's
backlog (healthy queueing), never inside the process.

bjoern takes the one item of a one-item list response and releases the list without
calling its ``close()`` (PEP 3333 says it must): the record is then written when the
response is released, flagged "no close seen".
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import pytest
from support.deploy_scenario import (
    WAITED_IF_LATE_S,
    report,
    run_with_live_look,
    sidecar_views,
)
from support.middleware_support import read_spools
from support.servers import Server, free_port, run_server, sidecar

from wsgiwatch.spool import layout as fmt


@pytest.fixture
def bjoern(spool_dir: str) -> Iterator[Server]:
    port = free_port()
    argv = [sys.executable, "-m", "support.bjoern_runner", "--port", str(port)]
    with run_server([*argv, "apps.stamped:application"], port, spool_dir) as server:
        yield server


@pytest.mark.timeout(60)
def test_a_burst_waits_in_the_backlog_not_in_the_process(bjoern: Server) -> None:
    running, port = sidecar(bjoern.spool_dir, "--poll-interval", "0.25")
    with running:
        url = f"http://127.0.0.1:{port}"
        outcomes, state = run_with_live_look(bjoern.port, url)
        views = sidecar_views(url, outcomes)
    table = report(outcomes, views)
    # Client truth: every fast request waited for the slow one...
    assert all(o.wait_s > WAITED_IF_LATE_S for o in outcomes[1:]), table
    # ... in the kernel's backlog, where the sidecar saw them, and in no worker.
    (listener,) = state["listeners"]
    assert listener["backlog"] >= 1 and state["stalls"] == [], state
    assert not any(v["blocked"] for v in views.values()), table
    # Every request recorded, although bjoern never called close() on the response.
    records = [r for s in read_spools(bjoern.spool_dir) for r in s.records]
    assert {o.route for o in outcomes} <= {r.route for r in records}
    assert all(r.flags & fmt.FLAG_NO_CLOSE_SEEN for r in records)
    (spool,) = read_spools(bjoern.spool_dir)
    assert spool.busy == []  # no slot left taken
