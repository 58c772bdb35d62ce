"""CPU time and resident memory of the workers, from procfs under the injectable root.

CPU time is exported per worker index, summed over the processes that held the index, so
the counter stays monotonic when a worker is replaced.
"""

from __future__ import annotations

from collections.abc import Iterable

import structlog

from wsgiwatch.kernel import procfs
from wsgiwatch.kernel.errors import KernelParseError
from wsgiwatch.sidecar.workers import Worker

log = structlog.get_logger("wsgiwatch.sidecar")


class ProcessSampler:
    def __init__(self, procfs_root: str = "/proc") -> None:
        self.procfs_root = procfs_root
        self.cpu_seconds: dict[int, float] = {}  # worker index -> seconds, cumulative
        self._base: dict[int, float] = {}  # worker index -> seconds of earlier holders
        self._holder: dict[int, int] = {}  # worker index -> pid sampled last
        self._parse_error_logged = False

    def sample(self, live: Iterable[Worker]) -> None:
        for worker in live:
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
