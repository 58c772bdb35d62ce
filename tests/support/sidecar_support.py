"""Crafted spools, a fake procfs and fake kernel snapshots for the sidecar's unit tests.

Spools are written byte for byte the way the middleware writes them (see
``wsgiwatch/worker/middleware.py``: ``WSGIWatch.__call__`` packs the scoreboard slot,
``_Call.finish``
copies the slot image into the ring and packs the exit part, stamp last), but with chosen
times, pids and parents, so a test can describe a whole scenario on one clock.
"""

from __future__ import annotations

import mmap
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from wsgiwatch.kernel import KernelSnapshot, TcpSocket, UnixSocket
from wsgiwatch.sidecar.monitor import Monitor
from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.writer import SpoolWriter

MS = 1_000_000
S = 1_000_000_000

#: Above any pid_max (at most 2**22 on Linux): never a real process, so psutil skips them.
FAKE_PID_BASE = 5_000_000
FAKE_PPID = 4_999_999

_STAT_TAIL = "0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0 0"


def stat_line(pid: int, start_ticks: int, comm: str = "gunicorn: worker [app]") -> str:
    """A ``/proc/PID/stat`` line whose field 22 (start time) is ``start_ticks``."""
    # Fields 3..21 (19 of them), then field 22, then the rest.
    middle = " ".join(["S", str(FAKE_PPID)] + ["0"] * 17)
    return f"{pid} ({comm}) {middle} {start_ticks} {_STAT_TAIL}\n"


class FakeProc:
    """A procfs root holding only ``stat`` files: processes are alive when listed here."""

    def __init__(self) -> None:
        self.root = tempfile.mkdtemp(prefix="wsgiwatch-fakeproc-")

    def add(self, pid: int, start_ticks: int) -> None:
        os.makedirs(os.path.join(self.root, str(pid)), exist_ok=True)
        with open(os.path.join(self.root, str(pid), "stat"), "w", encoding="ascii") as f:
            f.write(stat_line(pid, start_ticks))

    def kill(self, pid: int) -> None:
        shutil.rmtree(os.path.join(self.root, str(pid)))

    def cleanup(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)


def created_before(span_ns: int, now_ns: int | None = None) -> int:
    """A CLOCK_MONOTONIC time ``span_ns`` ago, never before boot: on a machine (or a time
    namespace) up for less than ``span_ns`` it is 0, the earliest time the clock can show.
    Subtracting a fixed span and storing the result unsigned is what broke 48 tests on
    machines booted minutes ago (issue 12)."""
    now = time.monotonic_ns() if now_ns is None else now_ns
    return max(0, now - span_ns)


def make_spool(
    directory: str,
    pid: int,
    *,
    start_ticks: int = 1000,
    ppid: int = FAKE_PPID,
    created_mono_ns: int | None = None,
    capacity: int = 1,
    slot_count: int = 4,
    ring_capacity: int = 64,
    accept_capacity: int = 16,
    accept_hook: bool = False,
    version: int = fmt.VERSION,
    magic: bytes = fmt.MAGIC,
) -> SpoolWriter:
    """A spool file for a process of our choosing (``open_spool`` only makes our own)."""
    path = os.path.join(directory, fmt.spool_name(pid, start_ticks))
    size = fmt.spool_size(slot_count, ring_capacity, accept_capacity)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.posix_fallocate(fd, 0, size)  # as open_spool does: readers refuse sparse spools
        mm = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
    finally:
        os.close(fd)
    fmt.HEADER_IDENTITY.pack_into(
        mm,
        0,
        magic,
        version,
        fmt.HEADER_SIZE,
        pid,
        start_ticks,
        time.time_ns(),
        created_before(3600 * S) if created_mono_ns is None else created_mono_ns,
        slot_count,
        fmt.SLOT_SIZE,
        ring_capacity,
        fmt.RECORD_SIZE,
        accept_capacity,
        fmt.ACCEPT_SIZE,
        capacity,
        ppid,
    )
    writer = SpoolWriter(mm, path, pid, slot_count, ring_capacity, accept_capacity)
    if accept_hook:
        writer.set_flags(fmt.HEADER_FLAG_ACCEPT_HOOK)
    return writer


@dataclass
class Req:
    """One request as the middleware would record it."""

    entry_ns: int
    exit_ns: int = 0
    route: str = "/fast"
    method: str = "GET"
    status: int = 200
    peer: str = "127.0.0.1"
    peer_port: int = 40000
    accept_ns: int = 0
    arrival_ns: int = 0
    source: int = fmt.SOURCE_NONE
    flags: int = 0
    proxy_wall_ns: int = 0
    request: int = 0  # 0: the writer's next request number


def _image(writer: SpoolWriter, req: Req) -> bytes:
    if not req.request:
        req.request = next(writer.request_numbers)
    return fmt.SLOT.pack(
        req.request,
        req.entry_ns,
        req.accept_ns,
        req.arrival_ns,
        1234,
        req.peer_port,
        fmt.METHOD_CODES.get(req.method, 0),
        req.source,
        req.peer.encode("ascii"),
        req.route.encode(),
    )


def start(writer: SpoolWriter, slot: int, req: Req) -> Req:
    """Put ``req`` on the scoreboard (running now), as ``WSGIWatch.__call__`` does."""
    off = fmt.HEADER_SIZE + slot * fmt.SLOT_SIZE
    writer.mm[off : off + fmt.SLOT_SIZE] = _image(writer, req)
    high = fmt.U32.unpack_from(writer.mm, fmt.OFF_SLOT_HIGH_WATER)[0]
    fmt.U32.pack_into(writer.mm, fmt.OFF_SLOT_HIGH_WATER, max(high, slot + 1))
    return req


def stop(writer: SpoolWriter, slot: int) -> None:
    """Mark a scoreboard slot idle."""
    writer.release_slot(slot)


def finish(writer: SpoolWriter, req: Req, slot: int = fmt.NO_SLOT) -> int:
    """Publish ``req`` as a finished record, as ``_Call.finish`` does; return its sequence."""
    image = _image(writer, req)
    seq = next(writer.record_seq)
    off = writer.record_base + (seq % writer.ring_capacity) * fmt.RECORD_SIZE
    mm = writer.mm
    mm[off + fmt.RECORD_SEQ_OFFSET : off + fmt.RECORD_SIZE] = fmt.U64.pack(fmt.INVALID_SEQ)
    mm[off : off + fmt.SLOT_SIZE] = image
    fmt.RECORD_EXIT.pack_into(
        mm,
        off + fmt.RECORD_EXIT_OFFSET,
        req.entry_ns + 1000,
        req.exit_ns,
        req.proxy_wall_ns,
        100,
        req.status,
        req.flags,
        8000,
        slot,
    )
    fmt.U64.pack_into(mm, off + fmt.RECORD_SEQ_OFFSET, seq + 1)
    fmt.U64.pack_into(mm, fmt.OFF_RING_HEAD, seq + 1)
    return seq


def accept(
    writer: SpoolWriter, accept_ns: int, peer: str, peer_port: int, arrival_ns: int = 0
) -> None:
    """An accept event, as the accept hook writes it."""
    writer.write_accept(accept_ns, arrival_ns, peer_port, 8000, 5, peer.encode("ascii"))


# --- kernel ---------------------------------------------------------------------------------
def tcp(
    *,
    state: str = "ESTABLISHED",
    local: str = "127.0.0.1",
    port: int = 8000,
    peer: str = "127.0.0.1",
    peer_port: int = 40000,
    rqueue: int = 0,
    wqueue: int = 0,
    inode: int = 0,
    recv_ms: int | None = 10,
    sent_ms: int | None = 10,
    family: int = 2,
) -> TcpSocket:
    return TcpSocket(
        family,
        state,
        local,
        port,
        peer,
        peer_port,
        rqueue,
        wqueue,
        1000,
        inode,
        recv_ms,
        sent_ms,
        None,
        None,
    )


def snapshot(socks: list[TcpSocket], mid_ns: int = 10 * S) -> KernelSnapshot:
    return KernelSnapshot(socks, [], mid_ns - 1000, mid_ns + 1000)


class FakeKernel:
    """Stands in for :class:`wsgiwatch.kernel.KernelObserver` in the monitor."""

    def __init__(self) -> None:
        self.inodes: dict[int, set[int]] = {}
        self.socks: list[TcpSocket] = []
        self.unix: list[UnixSocket] = []
        self.blind: dict[int, str] = {}  # pid -> why its sockets cannot be seen
        self.mid_ns = 0

    def socket_inodes(self, pid: int) -> set[int]:
        return set(self.inodes.get(pid, ()))

    def blindness(self, pid: int, *, fds_seen: bool = False) -> str | None:
        return self.blind.get(pid)

    def snapshot(self, tcp_ports: object = None, **_options: object) -> KernelSnapshot:
        mid = self.mid_ns or time.monotonic_ns()
        return KernelSnapshot(list(self.socks), list(self.unix), mid - 1000, mid + 1000)


# --- metrics --------------------------------------------------------------------------------
def scrape(monitor: Monitor) -> dict[str, list[Sample]]:
    """Samples by sample name, through prometheus_client's own exposition and parser."""
    registry = CollectorRegistry()
    registry.register(monitor)  # type: ignore[arg-type]
    text = generate_latest(registry).decode()
    out: dict[str, list[Sample]] = {}
    for family in text_string_to_metric_families(text):
        # A counter family is named without ``_total``; its samples with it.
        out.setdefault(family.name + ("_total" if family.type == "counter" else ""), [])
        for sample in family.samples:
            if sample.name in ZEROED_BLAME and sample.value == 0:
                continue  # series every route gets at 0 up front; tests look at the others
            out.setdefault(sample.name, []).append(sample)
    return out


#: The blame counters start at 0 for every route seen, so that the first incident shows in
#: rate(); ``scrape`` leaves those zeroes out.
ZEROED_BLAME = ("wsgiwatch_hol_blocked_requests_total", "wsgiwatch_hol_blocked_seconds_total")


def value(samples: dict[str, list[Sample]], name: str, **labels: str) -> float:
    """The one sample of ``name`` with exactly these labels (AssertionError if none)."""
    found = [s.value for s in samples.get(name, []) if s.labels == labels]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]
