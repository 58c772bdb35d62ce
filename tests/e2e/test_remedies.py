"""Proof of each remedy ``wsgiwatch diagnose`` can print: on the real server, the same
seeded traffic before and after the change, taken exactly as printed.

Before: gunicorn gthread 2 workers x 2 threads (accept hook on), seeded Poisson traffic
(30 requests/s for 10 s, 12% slow requests of 120 to 800 ms, each on its own connection),
the real sidecar. ``diagnose`` must find head-of-line blocking and print a remedy with its
flags (``add: ...``) and a prediction. After: the same server started with those flags,
the same traffic. Then, per the promise the advice makes:

- nothing waits inside a busy worker any more (the sidecar finds no blocked request);
- the fast route's p99, as its clients saw it, drops;
- throughput holds (within 5%; no request fails);
- the p99 predicted for the fast route before the change is within 25% (or 20 ms) of the
  one measured after it.

The figures print with ``-s``; docs/fixing.md quotes a run of record.
"""

from __future__ import annotations

import os
import re
from typing import Any

from support.poisson_load import Traffic
from support.remedy_proof import predicted_p99, run

from wsgiwatch.remedies.forecast import within_tolerance

TRAFFIC = Traffic(rate=30.0, duration_s=10.0, slow_share=0.12, slow_s=(0.12, 0.8), seed=7)


def test_gthread_worker_connections_remedy(tmp_path: Any) -> None:
    before = run(os.path.join(tmp_path, "before"), [], TRAFFIC)
    assert before.diagnose["verdict"] == "blocking", before.diagnose_text
    assert before.clients.errors == 0
    printed = re.findall(r"^\s+add: (.+)$", before.diagnose_text, re.MULTILINE)
    assert printed == ["--worker-connections 2 --keep-alive 0"], before.diagnose_text
    flags = printed[0]
    predicted = predicted_p99(before.diagnose, flags, "/fast")

    after = run(os.path.join(tmp_path, "after"), flags.split(), TRAFFIC)
    print(
        f"\ngthread 2x2, {TRAFFIC}:\n"
        f"  before: blocked {before.diagnose['blocked']}, /fast p50 "
        f"{before.clients.fast_p50_s * 1000:.0f} ms p99 {before.clients.fast_p99_s * 1000:.0f} ms,"
        f" {before.clients.throughput:.2f} req/s\n"
        f"  predicted with {flags}: /fast p99 {predicted * 1000:.0f} ms\n"
        f"  after:  blocked {after.diagnose['blocked']}, /fast p50 "
        f"{after.clients.fast_p50_s * 1000:.0f} ms p99 {after.clients.fast_p99_s * 1000:.0f} ms,"
        f" {after.clients.throughput:.2f} req/s"
    )
    assert after.diagnose["verdict"] == "healthy", after.diagnose_text
    assert after.diagnose["blocked"] == 0 and after.clients.errors == 0
    assert after.clients.fast_p99_s < before.clients.fast_p99_s
    assert abs(after.clients.throughput / before.clients.throughput - 1) <= 0.05
    assert within_tolerance(predicted, after.clients.fast_p99_s), (predicted, after.clients)
    # The remedy is in place now: diagnose must not print it again.
    assert "add:" not in after.diagnose_text
