"""CPU time and resident memory of the workers, from procfs under the injectable root.

CPU time is exported per worker index, summed over the processes that held the index, so
the counter stays monotonic when a worker is replaced.

A process is sampled when first seen, then at most every :data:`SAMPLE_EVERY_S`, not on
every poll: these are a counter and a gauge that Prometheus reads every 15 s or so, and
two ``/proc`` reads per worker twice a second were a tenth of an idle sidecar's time.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable

import structlog

from wsgiwatch.kernel import procfs
from wsgiwatch.kernel.errors import KernelParseError
from wsgiwatch.sidecar.workers import Worker

log = structlog.get_logger("wsgiwatch.sidecar")

#: How often each worker's CPU time and memory are read (seconds).
SAMPLE_EVERY_S = 2.0


class ProcessSampler:
    def __init__(
        self,
        procfs_root: str = "/proc",
        *,
        every_s: float = SAMPLE_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.procfs_root = procfs_root
        self.every_s = every_s
        self._clock = clock
        self._sampled_at: dict[Worker, float] = {}  # when each was last sampled
        self.samples = 0  # processes read so far (for tests)
        self.cpu_seconds: dict[int, float] = {}  # worker index -> seconds, cumulative
        self._base: dict[int, float] = {}  # worker index -> seconds of earlier holders
        self._holder: dict[int, int] = {}  # worker index -> pid sampled last
        self._parse_error_logged = False

    def sample(self, live: Iterable[Worker]) -> None:
        now = self._clock()
        due = now - self.every_s
        sampled_at = self._sampled_at
        seen = set()
        for worker in live:
            seen.add(worker)
            if sampled_at.get(worker, -math.inf) > due:
                continue
            sampled_at[worker] = now
            self.samples += 1
            try:
                sample = procfs.process_sample(worker.pid, self.procfs_root)
            except KernelParseError as exc:
                # CPU and memory are extras, not records: log once, go on without them.
                if not self._parse_error_logged:
                    self._parse_error_logged = True
                    log.error("procfs.unparsable", error=str(exc))
                continue
            if sample is None or sample.start_ticks != (
                worker.reader.start_ticks or sample.start_ticks
            ):
                continue  # it ended (or its pid was reused) since the listing: expected
            if self._holder.get(worker.index) != worker.pid:
                self._holder[worker.index] = worker.pid
                self._base[worker.index] = self.cpu_seconds.get(worker.index, 0.0)
            self.cpu_seconds[worker.index] = self._base[worker.index] + sample.cpu_seconds
            worker.rss = sample.rss_bytes
        for gone in [w for w in sampled_at if w not in seen]:
            del sampled_at[gone]  # (a worker followed anew is sampled at once)
