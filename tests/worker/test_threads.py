"""Many threads of one process writing one spool at once, and readers following it.

The writers are 16 threads calling one WSGIWatch app in this process (the way a threaded
server calls it). Every request carries a unique token in its path, letters only (digits
would be folded to ``:id``), and everything else about the request (method, status, body
size) is derived from that token. So a record that mixes two requests, or is half written,
cannot pass for a real one: the checks below compare every field with what its token says.
"""

from __future__ import annotations

import dataclasses
import mmap
import os
import threading
import time
from typing import Any

import pytest
from apps.spool_follower import Follower

from wsgiwatch import WSGIWatch
from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.reader import Record, SpoolReader, list_spools
from wsgiwatch.worker import middleware, process_spool

THREADS = 16
METHODS = ("GET", "POST", "PUT", "DELETE")
STATUSES = ("200 OK", "201 Created", "404 Not Found")
SERVER_PORT = 8080
PEER_PORT_BASE = 20000


def letters(n: int) -> str:
    """0 -> 'a', 25 -> 'z', 26 -> 'ba': a number as a token that is never folded to :id."""
    out = ""
    while True:
        n, digit = divmod(n, 26)
        out = chr(97 + digit) + out
        if not n:
            return out


def number(token: str) -> int:
    n = 0
    for ch in token:
        n = n * 26 + ord(ch) - 97
    return n


@dataclasses.dataclass(frozen=True)
class Sent:
    """What the client side of one request knows."""

    thread: int
    n: int
    tid: int  # native id of the calling thread
    before_ns: int  # before calling the app
    after_ns: int  # after close() of the response


def expected(thread: int, n: int) -> dict[str, Any]:
    path = f"/t/{letters(thread)}/{letters(n)}"
    return {
        "route": path,
        "method": METHODS[n % 4],
        "status": int(STATUSES[n % 3][:3]),
        "bytes_sent": len(path) * (1 + n % 4),
        "peer_port": PEER_PORT_BASE + thread,
        "server_port": SERVER_PORT,
    }


def token_app(environ: dict[str, Any], start_response: Any) -> Any:
    path = environ["PATH_INFO"]
    n = number(path.rsplit("/", 1)[1])
    start_response(STATUSES[n % 3], [("Content-Type", "text/plain")])
    body = path.encode() * (1 + n % 4)
    if n % 2:  # a streamed body: the record's exit is at close(), after the last chunk
        return iter([body[:3], body[3:]])
    return [body]


def call(app: WSGIWatch, thread: int, n: int, tid: int) -> Sent:
    environ = {
        "REQUEST_METHOD": METHODS[n % 4],
        "PATH_INFO": f"/t/{letters(thread)}/{letters(n)}",
        "SERVER_PORT": str(SERVER_PORT),
        "REMOTE_ADDR": "127.0.0.1",
        "REMOTE_PORT": str(PEER_PORT_BASE + thread),
        "wsgi.multithread": True,
        "wsgi.multiprocess": False,
    }
    before = time.monotonic_ns()
    result = app(environ, lambda status, headers, exc_info=None: None)
    try:
        for _chunk in result:
            pass
    finally:
        result.close()  # type: ignore[attr-defined]
    return Sent(thread, n, tid, before, time.monotonic_ns())


def run_writers(app: WSGIWatch, per_thread: int) -> dict[str, Sent]:
    """16 threads, each making ``per_thread`` requests, all released at once."""
    sent: dict[str, Sent] = {}
    errors: list[BaseException] = []
    barrier = threading.Barrier(THREADS)

    def writer(thread: int) -> None:
        try:
            tid = threading.get_native_id()
            barrier.wait(10)
            for n in range(per_thread):
                s = call(app, thread, n, tid)
                sent[f"/t/{letters(thread)}/{letters(n)}"] = s
        except BaseException as exc:  # reported below, in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert not any(t.is_alive() for t in threads)
    return sent


def check_record(
    record: Record | dict[str, Any], sent: dict[str, Sent], *, check_tid: bool = True
) -> None:
    """The record is exactly one request that was made, and its fields agree with it."""
    r = record if isinstance(record, dict) else record._asdict()
    who = sent.get(r["route"])
    assert who is not None, f"record of no request made: {r}"
    want = expected(who.thread, who.n)
    got = {key: r[key] for key in want}
    assert got == want, r
    if check_tid:
        assert r["tid"] == who.tid, r
    assert r["flags"] == 0, r
    assert r["accept_source"] == "none" and r["accept_ns"] == r["arrival_ns"] == 0, r
    # One clock for everything: the record's times fall inside the caller's own window.
    assert who.before_ns <= r["entry_ns"] <= r["headers_ns"] <= r["exit_ns"] <= who.after_ns, r


# The tests that call WSGIWatch run against the C path and the pure-Python one.
pytestmark = pytest.mark.usefixtures("implementation")


def the_spool(directory: str) -> str:
    (path,) = list_spools(directory)
    assert os.path.basename(path).startswith(f"{os.getpid()}-")
    return path


def test_sixteen_threads_every_request_recorded_exactly_once(watch_dir: str) -> None:
    per_thread = 250  # 4000 requests, in a ring of 8192: nothing may be lost
    app = WSGIWatch(token_app, spool_dir=watch_dir, ring_size=8192, slots=32)
    got: list[Record] = []
    lost = torn = 0
    stop = threading.Event()
    reader_errors: list[BaseException] = []

    def follow(reader: SpoolReader) -> None:
        # A reader in a thread of its own, reading while the writers write.
        nonlocal lost, torn
        try:
            while not stop.is_set():
                result = reader.read_records()
                got.extend(result.records)
                lost += result.lost
                torn += result.torn
                time.sleep(0.001)
        except BaseException as exc:
            reader_errors.append(exc)

    call(app, 0, 10_000, threading.get_native_id())  # opens the spool (a token of its own)
    with SpoolReader(the_spool(watch_dir), track=False) as reader:
        follower = threading.Thread(target=follow, args=(reader,))
        follower.start()
        try:
            sent = run_writers(app, per_thread)
        finally:
            stop.set()
            follower.join(30)
        assert not reader_errors, reader_errors
        final = reader.read_records()
        got.extend(final.records)
        lost += final.lost
        torn += final.torn
        header = reader.header()

    total = THREADS * per_thread + 1
    assert (lost, torn) == (0, 0)
    assert len(got) == total == header.ring_head
    assert [r.seq for r in got] == list(range(total))  # each once, in order
    assert sorted(r.request for r in got) == list(range(1, total + 1))
    assert header.write_errors == 0 and header.slots_exhausted == 0
    assert 1 <= header.slot_high_water <= THREADS + 1
    assert all(r.slot < header.slot_count for r in got)
    warmup, *records = got
    assert warmup.route == f"/t/a/{letters(10_000)}"
    assert {r.route for r in records} == set(sent)
    for record in records:
        # (tid: see test_record_tid_is_the_callers_after_a_thread_ident_is_reused)
        check_record(record, sent, check_tid=False)


def test_reader_in_another_process_lapped_by_sixteen_threads(watch_dir: str) -> None:
    per_thread = 600  # 9600 requests through a 64-record ring: the reader will be lapped
    app = WSGIWatch(token_app, spool_dir=watch_dir, ring_size=64, slots=32)
    call(app, 0, 10_000, threading.get_native_id())
    with Follower(the_spool(watch_dir), poll_ms=2.0) as follower:
        sent = run_writers(app, per_thread)
        with SpoolReader(the_spool(watch_dir), track=False) as reader:
            head = reader.header().ring_head
        report = follower.finish(head)

    total = THREADS * per_thread + 1
    assert head == total
    records = [r for r in report["records"] if r["route"] != f"/t/a/{letters(10_000)}"]
    assert report["torn"] == 0
    assert report["cursor"] == total
    assert len(report["records"]) + report["lost"] == total
    assert report["lost"] > 0, "the writers never lapped the reader: the test proved nothing"
    assert report["polls_with_records"] > 1, "the reader did not read while the writers wrote"
    assert len({r["seq"] for r in report["records"]}) == len(report["records"])
    assert len({r["request"] for r in report["records"]}) == len(report["records"])
    for record in records:
        check_record(record, sent, check_tid=False)


def test_record_tid_is_the_callers_after_a_thread_ident_is_reused(watch_dir: str) -> None:
    """Servers that start a thread per request (werkzeug's threaded server, socketserver's
    ThreadingMixIn) end threads all the time, and CPython hands a new thread the ident
    (pthread_t) of one that ended; the kernel gives it a new native id."""
    app = WSGIWatch(token_app, spool_dir=watch_dir)
    sent: dict[str, Sent] = {}
    idents: list[int] = []

    def one_request(thread: int) -> None:
        idents.append(threading.get_ident())
        sent[f"/t/{letters(thread)}/a"] = call(app, thread, 0, threading.get_native_id())

    # One thread after another until one is handed an ended one's ident: usually the
    # second (glibc reuses the stack, pthread_t is its address); under load it may take a
    # few more.
    for thread in range(32):
        t = threading.Thread(target=one_request, args=(thread,))
        t.start()
        t.join(10)
        if len(set(idents)) < len(idents):
            break
    assert len(set(idents)) < len(idents), f"no ident reused ({idents}): nothing was checked"
    assert len({s.tid for s in sent.values()}) == len(sent)
    with SpoolReader(the_spool(watch_dir), track=False) as reader:
        records = reader.read_records().records
    assert len(records) == len(sent)
    for record in records:
        assert record.tid == sent[record.route].tid, (record.route, record.tid, sent)
        check_record(record, sent)


class PausingMmap(mmap.mmap):
    """The spool's memory, mapped again, that stops one chosen thread in mid-write.

    After that thread has copied its record's body into its ring entry and before it
    stamps (publishes) it, it waits for ``release``. This stands in, deterministically,
    for the interpreter switching threads there, which it may do after any call: with a
    thread switch interval of 50 us, mixed records showed up in a stress run of the tests
    above without any help (before the ring writes took a lock).
    """

    thread: int | None = None
    ring_start = ring_end = 0
    paused: threading.Event
    release: threading.Event

    def __setitem__(self, key: Any, value: Any) -> None:
        super().__setitem__(key, value)
        if (
            threading.get_ident() == self.thread
            and isinstance(key, slice)
            and self.ring_start <= key.start < self.ring_end
            and key.stop - key.start == fmt.RECORD_SEQ_OFFSET  # the body, not yet stamped
        ):
            self.thread = None
            self.paused.set()
            self.release.wait(10)


def test_writer_lapped_in_mid_write_never_publishes_a_mixed_record(watch_dir: str) -> None:
    """The pure-Python ring write, as it runs without the accelerator: a thread paused
    between claiming an entry and stamping it holds the others back. (The C write cannot
    be paused: it holds the GIL from claim to stamp.)"""
    ring = 8
    app = middleware.PythonWSGIWatch(token_app, spool_dir=watch_dir, ring_size=ring, slots=4)
    tid = threading.get_native_id()
    sent = {f"/t/b/{letters(0)}": call(app, 1, 0, tid)}  # seq 0; opens the spool
    writer = process_spool.writer_for(watch_dir)
    assert writer is not None
    fd = os.open(writer.path, os.O_RDWR)
    try:
        pausing = PausingMmap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
    pausing.ring_start = writer.record_base
    pausing.ring_end = writer.record_base + ring * fmt.RECORD_SIZE
    pausing.paused, pausing.release = threading.Event(), threading.Event()
    original, writer.mm = writer.mm, pausing
    accelerated, writer.commit = writer.commit, writer.commit_locked  # Python's, with its lock

    def paused_request() -> None:
        pausing.thread = threading.get_ident()
        sent["/t/c/b"] = call(app, 2, 1, threading.get_native_id())

    try:
        with SpoolReader(the_spool(watch_dir), track=False) as reader:
            assert len(reader.read_records().records) == 1  # the reader now waits for seq 1
            thread = threading.Thread(target=paused_request)
            thread.start()  # claims seq 1, writes its body, stops before the stamp

            def lap() -> None:
                for n in range(1, ring + 1):  # seq 2 .. ring+1: the last one reuses seq 1's
                    sent[f"/t/b/{letters(n)}"] = call(app, 1, n, tid)

            lapper = threading.Thread(target=lap)
            try:
                assert pausing.paused.wait(10)
                lapper.start()
                # The others cannot get into the ring while it is mid-write.
                lapper.join(0.3)
                assert lapper.is_alive()
            finally:
                pausing.release.set()
                thread.join(10)
                lapper.join(10)
            assert not lapper.is_alive()
            assert "/t/c/b" in sent
            records = reader.read_records().records
    finally:
        writer.mm = original
        writer.commit = accelerated
        pausing.close()
    assert records
    for record in records:
        # Each record a reader accepts must be one request, whole: the lapped writer's
        # record may be lost (and counted), never published over another one's body.
        check_record(record, sent, check_tid=False)
