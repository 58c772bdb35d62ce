"""Hostile files in the spool directory: the reader refuses each one at once with a reason
(never blocks, never maps, never allocates from a header's claims), and a real gunicorn
worker and a real sidecar serving next to them carry on: every request is answered and
counted, ``/metrics`` answers, the sidecar stays small."""

from __future__ import annotations

import os
import threading
import time
import tracemalloc
import urllib.request

import pytest
from faults.hostile import MAKERS, header
from support.hol_scenario import wait_until
from support.servers import gunicorn, sidecar

from wsgiwatch.errors import SpoolFormatError, SpoolNotReady
from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.reader import SpoolReader, list_spools


@pytest.mark.parametrize("maker", sorted(MAKERS))
def test_the_reader_refuses_each_hostile_file_at_once(spool_dir: str, maker: str) -> None:
    reason = MAKERS[maker](spool_dir)
    (path,) = list_spools(spool_dir)
    outcome: list[BaseException] = []

    def open_it() -> None:
        try:
            SpoolReader(path).close()
        except BaseException as exc:  # the assertion below says which
            outcome.append(exc)

    tracemalloc.start()
    try:
        opener = threading.Thread(target=open_it, daemon=True)
        opener.start()
        opener.join(5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert not opener.is_alive(), f"opening {maker} blocked"
    assert len(outcome) == 1 and isinstance(outcome[0], SpoolFormatError), outcome
    assert outcome[0].reason == reason
    assert os.path.basename(path) in str(outcome[0])
    assert peak < 1 << 20  # nothing sized from the header's claims


def test_an_all_zero_file_says_how_long_it_has_been_zero(spool_dir: str) -> None:
    MAKERS["all_zero"](spool_dir)
    (path,) = list_spools(spool_dir)
    old = time.time() - 60
    os.utime(path, (old, old))
    with pytest.raises(SpoolNotReady) as info:
        SpoolReader(path)
    assert info.value.zeroed
    assert info.value.age_s >= 59


def test_a_foreign_owned_spool_is_refused(spool_dir: str) -> None:
    path = os.path.join(spool_dir, fmt.spool_name(5_100_100, 1000))
    with open(path, "wb") as f:
        f.write(header(4, 64, 16) + b"\0" * (fmt.spool_size(4, 64, 16) - fmt.HEADER_SIZE))
    os.chown(path, 54321, 54321)  # root in CI: a uid that is neither ours nor the dir's
    with pytest.raises(SpoolFormatError) as info:
        SpoolReader(path)
    assert info.value.reason == "owner"


def test_a_spool_truncated_under_an_open_reader_is_an_error_not_sigbus(spool_dir: str) -> None:
    path = os.path.join(spool_dir, fmt.spool_name(5_100_101, 1000))
    size = fmt.spool_size(4, 64, 16)
    with open(path, "wb") as f:
        f.write(header(4, 64, 16) + b"\0" * (size - fmt.HEADER_SIZE))
    with SpoolReader(path) as reader:
        reader.read_records()
        os.truncate(path, 0)
        for read in (reader.read_records, reader.scoreboard, reader.read_accepts, reader.header):
            with pytest.raises(SpoolFormatError, match="truncated") as info:
                read()
            assert info.value.reason == "truncated"
            assert "offset" in str(info.value)


def _get(url: str) -> tuple[int, bytes]:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return reply.status, reply.read()


def _metric(port: int, name: str) -> float:
    _, body = _get(f"http://127.0.0.1:{port}/metrics")
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.decode().splitlines()
        if line.startswith(name) and not line.startswith("#")
    )


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_gunicorn_and_the_sidecar_carry_on_next_to_every_hostile_file(spool_dir: str) -> None:
    for make in MAKERS.values():
        make(spool_dir)
    hostile = len(MAKERS)
    sidecar_server, port = sidecar(spool_dir)
    with gunicorn("apps.basic:application", spool_dir) as app, sidecar_server as sc:
        began = time.monotonic()
        for i in range(20):
            status, body = _get(f"{app.url}/fast/{i}")
            assert (status, body) == (200, b"fast\n")
        assert time.monotonic() - began < 10  # a FIFO once hung every worker for good
        wait_until(lambda: _metric(port, "wsgiwatch_requests_total") == 20, timeout=15)
        # Each refused file is counted (the all-zero one once it has stayed zero).
        wait_until(lambda: _metric(port, "wsgiwatch_spool_errors_total") >= hostile - 2, timeout=10)
        assert _metric(port, "wsgiwatch_workers") == 1
        assert sc.proc.poll() is None
        assert _rss_kb(sc.proc.pid) < 150_000  # 4M crafted slots once took it past 256 MB
        status, _ = _get(f"http://127.0.0.1:{port}/healthz")
        assert status == 200


def test_a_forged_ring_head_does_not_stop_the_sidecar_reading_a_worker(spool_dir: str) -> None:
    """An 8-byte write (ring_head = 2**63) into a live worker's spool once made the sidecar
    jump its cursor there and save it: that worker was never read again, and the dropped
    counter read 9.2e18. Now the head is not believed, and nothing is lost."""
    sidecar_server, port = sidecar(spool_dir)
    with gunicorn("apps.basic:application", spool_dir) as app, sidecar_server:
        for i in range(5):
            _get(f"{app.url}/fast/{i}")
        wait_until(lambda: _metric(port, "wsgiwatch_requests_total") == 5, timeout=15)
        (path,) = list_spools(spool_dir)
        fd = os.open(path, os.O_WRONLY)
        try:
            os.pwrite(fd, fmt.U64.pack(2**63), fmt.OFF_RING_HEAD)
        finally:
            os.close(fd)
        time.sleep(1.0)  # a few polls see the forged head before the worker writes again
        for i in range(10):
            _get(f"{app.url}/fast/after/{i}")
        wait_until(lambda: _metric(port, "wsgiwatch_requests_total") == 15, timeout=15)
        assert _metric(port, "wsgiwatch_spool_records_dropped_total") == 0
