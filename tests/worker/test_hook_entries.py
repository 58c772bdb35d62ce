"""The accept hook's table (accept_hook.ACCEPTED, keyed by peer port, the address in the
entry) as both paths read it: the C path's own lookup (hook_entry, note_ready) against the
Python one (connection, accept_sources, note_request_ready), entry by entry, hostile
entries included; and the table's own rules (chains per port, replacement, the cap)."""

from __future__ import annotations

import copy
import itertools
import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from support.middleware_support import StartResponse, environ_for, forget_spool, read_spools

from wsgiwatch import WSGIWatch
from wsgiwatch.spool import layout as fmt
from wsgiwatch.worker import accelerator, accept_hook, middleware
from wsgiwatch.worker.accept_hook import (
    ACCEPTED,
    CHAIN_MAX,
    ENTRY_LEN,
    NEXT,
    READY,
    USES,
    connection,
    remember,
)

PEER, PORT = "10.0.0.7", 40001
speedups = accelerator.speedups


def _entry(accept: Any, arrival: Any, uses: Any, ready: Any, peer: Any = PEER) -> list[Any]:
    return [accept, arrival, uses, ready, peer, None]


def _chain(*entries: list[Any]) -> list[Any]:
    for entry, after in itertools.pairwise(entries):
        entry[NEXT] = after
    return entries[0]


def _cycle() -> list[Any]:
    other = _entry(5, 0, 0, 9, peer="10.9.9.9")
    other[NEXT] = other  # a loop with no entry of ours in it
    return other


def _deep() -> list[Any]:
    """Ours behind CHAIN_MAX others: further than either path walks."""
    others = [_entry(5, 0, 0, 9, peer=f"10.9.9.{i}") for i in range(CHAIN_MAX)]
    return _chain(*others, _entry(1000, 900, 1, 1500))


#: ACCEPTED[PORT] as a request from (PEER, PORT) finds it: what the hook writes, and what
#: it never writes (each must give the same record from both paths, and never an error).
ENTRIES: dict[str, Callable[[], Any]] = {
    "ready noted": lambda: _entry(1000, 0, 1, 1500),
    "first request, arrival at accept": lambda: _entry(1000, 900, 0, 0),
    "first request, nothing arrived at accept": lambda: _entry(1000, 0, 0, 0),
    "kept alive, not noted": lambda: _entry(1000, 900, 3, 0),
    "behind another address": lambda: _chain(
        _entry(5, 0, 0, 9, peer="10.0.0.8"), _entry(1000, 900, 0, 0)
    ),
    "only other addresses": lambda: _chain(_entry(5, 0, 0, 9, peer="10.0.0.8")),
    "deeper than the walk": _deep,
    "a loop": _cycle,
    "no entry": lambda: None,
    "not a list": lambda: (1000, 900, 0, 0, PEER, None),
    "a short list": lambda: [1000, 900, 0, 0],
    "bool for an int": lambda: _entry(1000, True, 0, 0),
    "a negative time": lambda: _entry(-5, 900, 0, 0),
    "a time past 2**63": lambda: _entry(1 << 63, 900, 0, 1500),
    "a float": lambda: _entry(1000.0, 900, 0, 0),
    "an int subclass": lambda: _entry(1000, 900, 0, type("Int", (int,), {})(7)),
    "peer as bytes": lambda: _entry(1000, 900, 0, 0, peer=PEER.encode()),
    "peer not ASCII": lambda: _entry(1000, 900, 0, 0, peer="10.0.0.7\u00e9"),
    "an odd entry behind another address": lambda: _chain(
        _entry(5, 0, 0, 9, peer="10.0.0.8"), _entry(1000, -1, 0, 0)
    ),
    "an odd entry before ours": lambda: _chain(
        _entry(5, "x", 0, 9, peer="10.0.0.8"), _entry(1000, 900, 0, 0)
    ),
}


@pytest.fixture
def accepted() -> Iterator[dict[int, list[Any]]]:
    saved = dict(ACCEPTED)
    ACCEPTED.clear()
    yield ACCEPTED
    ACCEPTED.clear()
    ACCEPTED.update(saved)


def _hello(environ: dict[str, Any], start_response: Any) -> list[bytes]:
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]


def _serve(cls: type, directory: str, make: Callable[[], Any], **environ: Any) -> Any:
    """One request from (PEER, PORT) with ACCEPTED[PORT] = make() (and another port's
    entry, so the table is never empty); the record, the spool header and the table after."""
    ACCEPTED.clear()
    ACCEPTED[PORT + 1] = _entry(1, 0, 0, 0)
    entry = make()
    if entry is not None:
        ACCEPTED[PORT] = entry
    watched = cls(_hello, spool_dir=directory, slots=2, ring_size=16, accept_events=4)
    env = environ_for("/hooked/1", REMOTE_ADDR=PEER, REMOTE_PORT=str(PORT), **environ)
    result = watched(env, StartResponse())
    assert b"".join(result) == b"hello"  # the app answered, whatever the table held
    result.close()
    (spool,) = read_spools(directory)
    (record,) = spool.records
    return record, spool.header, copy.deepcopy(ACCEPTED.get(PORT))


@pytest.mark.parametrize("case", list(ENTRIES))
@pytest.mark.parametrize("extra", [{}, {"mod_wsgi.request_start": "1"}], ids=["", "mod_wsgi"])
def test_c_and_python_read_an_entry_alike(
    case: str,
    extra: dict[str, Any],
    accepted: dict[int, list[Any]],
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    assert speedups is not None, "wsgiwatch.worker._speedups did not build (see pip's output)"
    seen = {}
    for cls in (WSGIWatch, middleware.PythonWSGIWatch):
        directory = str(tmp_path_factory.mktemp(cls.__name__))
        os.chmod(directory, 0o700)
        try:
            seen[cls] = _serve(cls, directory, ENTRIES[case], **extra)
        finally:
            forget_spool(directory)
    (c_record, c_header, c_after), (p_record, p_header, p_after) = seen.values()
    for name in ("accept_ns", "arrival_ns", "accept_source", "flags", "peer", "peer_port"):
        assert getattr(c_record, name) == getattr(p_record, name), name
    assert c_header.write_errors == p_header.write_errors == 0
    assert c_header.times_rejected == p_header.times_rejected
    # Both mark the connection used and its ready note spent; the count itself is the
    # Python path's (C stores 1: only "served before" is ever read).
    if isinstance(c_after, list) and len(c_after) == ENTRY_LEN:
        c_part, p_part = c_after[:NEXT], p_after[:NEXT]  # a chain may loop: not compared
        if c_part != p_part:
            assert c_part[:USES] + c_part[READY:] == p_part[:USES] + p_part[READY:]
            assert bool(c_part[USES]) == bool(p_part[USES])
    else:
        assert c_after == p_after


def test_entries_read_as_the_hook_means_them(
    accepted: dict[int, list[Any]], tmp_path_factory: pytest.TempPathFactory
) -> None:
    """What each well-formed case says, read by the implementation users get."""
    expect = {
        "ready noted": (1000, 1500, fmt.FLAG_REUSED_CONNECTION | fmt.FLAG_ARRIVAL_SERVER),
        "first request, arrival at accept": (1000, 900, fmt.FLAG_ARRIVAL_TCP_INFO),
        "first request, nothing arrived at accept": (1000, 0, 0),
        "kept alive, not noted": (1000, 0, fmt.FLAG_REUSED_CONNECTION),
        "behind another address": (1000, 900, fmt.FLAG_ARRIVAL_TCP_INFO),
        "only other addresses": (0, 0, 0),
        "deeper than the walk": (0, 0, 0),
        "a loop": (0, 0, 0),
        "a negative time": (0, 0, 0),
        "an odd entry before ours": (0, 0, 0),
    }
    for case, (accept, arrival, flags) in expect.items():
        directory = str(tmp_path_factory.mktemp("read"))
        os.chmod(directory, 0o700)
        try:
            record, _, _ = _serve(WSGIWatch, directory, ENTRIES[case])
        finally:
            forget_spool(directory)
        assert (record.accept_ns, record.arrival_ns, record.flags) == (accept, arrival, flags), case
        assert (record.accept_source == "hook") == bool(accept), case


#: The cases whose entry a note from our address finds.
NOTED = {
    "ready noted",
    "first request, arrival at accept",
    "first request, nothing arrived at accept",
    "kept alive, not noted",
    "behind another address",
}
#: The addresses that name (PEER, PORT) once Python reads them (str(), int()).
FINDING: list[Any] = [(PEER, PORT), [PEER, PORT], (PEER, str(PORT)), (PEER, PORT, 0, 0)]
ADDRS: list[Any] = [
    (PEER, PORT),
    [PEER, PORT],
    (PEER, str(PORT)),
    (PEER.encode(), PORT),
    (PEER, PORT, 0, 0),  # an IPv6 address tuple has four items
    (PEER, 1 << 70),
    (PEER, -2),
    (PEER,),
    None,
    "",
]


@pytest.mark.parametrize("case", list(ENTRIES))
def test_note_ready_in_c_notes_as_python_does(case: str, accepted: dict[int, list[Any]]) -> None:
    assert speedups is not None
    assert accept_hook.note_ready is speedups.note_ready
    for addr in ADDRS:
        after, noted = [], []
        for note in (speedups.note_ready, accept_hook.note_request_ready):
            ACCEPTED.clear()
            entry = ENTRIES[case]()
            if entry is not None:
                ACCEPTED[PORT] = entry
            assert note(addr) is None  # never raises
            after.append(ACCEPTED.get(PORT))
            ours = connection(PEER, PORT)
            noted.append(ours is not None and ours[READY] > 1 << 32)
        c_after, p_after = after
        if not isinstance(c_after, list) or len(c_after) != ENTRY_LEN:
            assert c_after == p_after
            continue
        for index in range(ENTRY_LEN):
            c_value, p_value = c_after[index], p_after[index]
            if index == READY and type(c_value) is type(p_value) is int:
                # a clock read when noted, each its own: whether it was noted must agree
                assert (c_value > 1 << 32) == (p_value > 1 << 32), (addr, case)
            elif index != NEXT:
                assert c_value == p_value, (addr, case, index)
        assert noted[0] == noted[1] == (case in NOTED and addr in FINDING), (addr, case)


def test_a_new_connection_replaces_its_address_and_port_only(
    accepted: dict[int, list[Any]],
) -> None:
    remember("10.0.0.1", PORT, 100, 0)
    remember("10.0.0.2", PORT, 200, 0)
    remember("10.0.0.1", PORT, 300, 0)  # the first one closed, a new one came
    first, second = connection("10.0.0.1", PORT), connection("10.0.0.2", PORT)
    assert first is not None and first[0] == 300
    assert second is not None and second[0] == 200
    assert first[NEXT] is second and second[NEXT] is None
    assert connection("10.0.0.3", PORT) is None
    remember(accept_hook.UNIX, accept_hook.unix_key(5), 400, 0)
    assert connection(accept_hook.UNIX, accept_hook.unix_key(5)) == [400, 0, 0, 0, "unix", None]
    assert connection("10.0.0.1", 5) is None


def test_a_port_keeps_its_newest_connections(accepted: dict[int, list[Any]]) -> None:
    for i in range(CHAIN_MAX + 3):
        remember(f"10.0.0.{i}", PORT, i, 0)
    newest = range(3, CHAIN_MAX + 3)
    assert [connection(f"10.0.0.{i}", PORT) is not None for i in newest] == [True] * CHAIN_MAX
    assert connection("10.0.0.0", PORT) is None


def test_a_full_table_sheds_its_oldest_half(accepted: dict[int, list[Any]]) -> None:
    for port in range(accept_hook.ACCEPTED_LIMIT):
        remember(PEER, port, 1, 0)
    remember(PEER, 0, 2, 0)  # reused: now the newest
    remember(PEER, 70_000, 3, 0)  # one over the limit
    assert len(ACCEPTED) == accept_hook.ACCEPTED_LIMIT // 2 + 1
    assert connection(PEER, 0) is not None and connection(PEER, 1) is None
    assert connection(PEER, 70_000) is not None


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["a", "b", "c", "d", "e", "f"]), st.integers(1, 3)),
        max_size=40,
    )
)
def test_a_lookup_finds_the_newest_accept_or_nothing(accepts: list[tuple[str, int]]) -> None:
    """Never a stale connection: the entry found is that of the newest accept from that
    address and port; and while a port has no more addresses than the chain holds, it is
    always found."""
    saved = dict(ACCEPTED)
    ACCEPTED.clear()
    try:
        newest: dict[tuple[str, int], int] = {}
        for n, (peer, port) in enumerate(accepts):
            remember(peer, port, n + 1, 0)
            newest[(peer, port)] = n + 1
        for (peer, port), n in newest.items():
            found = connection(peer, port)
            assert found is None or found[0] == n
            peers = {p for (p, q) in newest if q == port}
            if len(peers) <= CHAIN_MAX:
                assert found is not None
    finally:
        ACCEPTED.clear()
        ACCEPTED.update(saved)
