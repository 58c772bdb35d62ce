"""Workers' CPU time and memory are read when a worker is first seen, then at most every
``every_s``: not on every poll."""

from __future__ import annotations

from support.sidecar_support import FAKE_PID_BASE, FAKE_PPID, FakeProc, make_spool

from wsgiwatch.sidecar.processes import ProcessSampler
from wsgiwatch.sidecar.workers import WorkerRegistry

W1, W2 = FAKE_PID_BASE + 41, FAKE_PID_BASE + 42


def burn(proc: FakeProc, pid: int, ticks: int) -> None:
    """Give fake process ``pid`` ``ticks`` clock ticks of user time (stat field 14)."""
    fields = ["S", str(FAKE_PPID)] + ["0"] * 17 + ["1000"] + ["0"] * 20  # fields 3 to 42
    fields[14 - 3] = str(ticks)
    with open(f"{proc.root}/{pid}/stat", "w", encoding="ascii") as f:
        f.write(f"{pid} (worker) {' '.join(fields)}\n")


def test_each_worker_is_sampled_at_once_then_every_interval(spool_dir: str, proc: FakeProc) -> None:
    clock = [100.0]
    sampler = ProcessSampler(proc.root, every_s=2.0, clock=lambda: clock[0])
    registry = WorkerRegistry(spool_dir, proc.root)
    try:
        proc.add(W1, 1000)
        make_spool(spool_dir, W1, start_ticks=1000).unmap()
        burn(proc, W1, 100)
        registry.refresh()
        sampler.sample(registry.live())
        first = dict(sampler.cpu_seconds)
        assert sampler.samples == 1 and all(seconds > 0 for seconds in first.values())

        burn(proc, W1, 200)
        clock[0] += 1.0  # a poll later: not read again
        sampler.sample(registry.live())
        assert sampler.samples == 1 and sampler.cpu_seconds == first

        proc.add(W2, 1000)  # a new worker is read at once, the other one still not
        make_spool(spool_dir, W2, start_ticks=1000).unmap()
        registry.refresh()
        sampler.sample(registry.live())
        assert sampler.samples == 2 and len(sampler.cpu_seconds) == 2

        clock[0] += 1.0  # the interval is up for W1
        sampler.sample(registry.live())
        assert sampler.samples == 3
        index = next(w.index for w in registry.live() if w.pid == W1)
        assert sampler.cpu_seconds[index] == 2 * first[index]
    finally:
        registry.close()
