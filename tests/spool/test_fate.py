"""A worker's note on its own fate: written by the worker beside its spool, read by the
sidecar without trusting it (no links, no FIFOs, no huge files, only our JSON)."""

from __future__ import annotations

import os
import threading

import pytest
from support.sidecar_support import Req, make_spool, start

from wsgiwatch import WSGIWatch
from wsgiwatch.spool import fate
from wsgiwatch.spool.reader import list_spools
from wsgiwatch.worker import process_spool


def test_a_note_round_trips(spool_dir: str) -> None:
    path = os.path.join(spool_dir, "123-456.spool")
    fate.write_note(path, fate.TIMED_OUT, [3, 1])
    assert fate.note_path(path) == os.path.join(spool_dir, "123-456.fate")
    assert fate.read_note(path) == fate.Note(fate.TIMED_OUT, frozenset({1, 3}))
    assert os.listdir(spool_dir) == ["123-456.fate"]  # no temporary left behind


def test_exited_never_replaces_timed_out(spool_dir: str) -> None:
    path = os.path.join(spool_dir, "1-1.spool")
    fate.write_note(path, fate.TIMED_OUT, [7])
    fate.write_note(path, fate.EXITED, [])
    assert fate.read_note(path) == fate.Note(fate.TIMED_OUT, frozenset({7}))


def test_an_unknown_fate_is_refused(spool_dir: str) -> None:
    with pytest.raises(ValueError, match="fate must be one of"):
        fate.write_note(os.path.join(spool_dir, "1-1.spool"), "vanished")


@pytest.mark.parametrize("kind", ["fifo", "symlink", "directory", "missing"])
def test_a_note_that_is_no_file_of_ours_reads_as_none_at_once(spool_dir: str, kind: str) -> None:
    path = os.path.join(spool_dir, "1-1.spool")
    note = fate.note_path(path)
    elsewhere = os.path.join(spool_dir, "elsewhere")
    fate.write_note(elsewhere + ".spool", fate.EXITED)
    if kind == "fifo":
        os.mkfifo(note)
    elif kind == "symlink":
        os.symlink(elsewhere + ".fate", note)
    elif kind == "directory":
        os.mkdir(note)
    found: list[object] = []
    reader = threading.Thread(target=lambda: found.append(fate.read_note(path)), daemon=True)
    reader.start()
    reader.join(10)
    assert not reader.is_alive(), "reading the note blocked"
    assert found == [None]


def test_note_fate_lists_the_requests_in_flight_of_this_process(watch_dir: str) -> None:
    """What gunicorn's worker_abort hook does, in this process: the note names the
    requests on the scoreboard now."""
    seen: list[int] = []

    def app(environ: dict[str, object], start_response: object) -> list[bytes]:
        writer = process_spool.writer_for(watch_dir)
        assert writer is not None
        seen.extend(fate.running_requests(writer.mm, writer.slot_count))
        process_spool.note_fate(fate.TIMED_OUT)
        start_response("200 OK", [])  # type: ignore[operator]
        return [b"ok"]

    watched = WSGIWatch(app, spool_dir=watch_dir)
    body = watched({"REQUEST_METHOD": "GET", "PATH_INFO": "/x"}, lambda *a: None)
    list(body)
    getattr(body, "close", lambda: None)()
    (path,) = list_spools(watch_dir)
    assert len(seen) == 1
    assert fate.read_note(path) == fate.Note(fate.TIMED_OUT, frozenset(seen))


def test_running_requests_reads_the_scoreboard(spool_dir: str) -> None:
    writer = make_spool(spool_dir, 5_000_031, slot_count=4)
    start(writer, 0, Req(1, request=11))
    start(writer, 2, Req(1, request=12))
    assert fate.running_requests(writer.mm, writer.slot_count) == [11, 12]
