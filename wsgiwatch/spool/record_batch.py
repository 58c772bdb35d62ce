"""Finished-request records decoded in batches: the sidecar's per-record decoding.

The reader copies a batch of ring entries twice and checks their stamps
(:mod:`wsgiwatch.spool.reader`); the entries whole in both copies become
:class:`~wsgiwatch.spool.records.Record` values here, in C when the optional
``wsgiwatch.spool._batch`` was built (:func:`decode_block`), else in Python
(:func:`decode_rows`, its twin: tests/spool/test_batch_decode.py checks both against a
one-entry-at-a-time decoding on any bytes). Route and peer text are decoded once per
distinct value, in bounded caches both paths share.
"""

from __future__ import annotations

import itertools
import os
import struct
from collections.abc import Iterable
from types import ModuleType
from typing import Any

from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.records import Record, method_name, source_name, text_field

_new_record = tuple.__new__  # a Record (a tuple) from its fields, in one call

__all__ = [
    "RECORD_ROW",
    "RECORD_STAMP",
    "Row",
    "decode_block",
    "decode_record",
    "decode_rows",
]


def decode_record(seq: int, pid: int, raw: bytes, at: int = 0) -> Record:
    """The record at offset ``at`` of ``raw`` (a ring entry), as sequence ``seq`` of ``pid``."""
    return decode_rows(pid, [(seq, RECORD_ROW.unpack_from(raw, at))])[0]


#: A whole ring entry in one unpack: the slot image, the exit part, the stamp.
RECORD_ROW = struct.Struct(fmt.SLOT.format + fmt.RECORD_EXIT.format.lstrip("<") + "Q")
#: Only the stamp of each entry (to read a whole copy's stamps with ``iter_unpack``).
RECORD_STAMP = struct.Struct(f"<{fmt.RECORD_SEQ_OFFSET}xQ")
#: One field of RECORD_ROW unpacked: the stamp is the last one.
Row = tuple[Any, ...]
_METHOD_NAMES = tuple(method_name(code) for code in range(256))
_SOURCE_NAMES = tuple(source_name(code) for code in range(256))
#: Text fields seen, as bytes -> str. A spool holds a handful of routes and peers, read
#: thousands of times; decoding each once is most of the saving. Bounded: emptied when full
#: (a flood of distinct paths costs a decode each, as without it).
TEXT_CACHE_ENTRIES = 4096
_peers: dict[bytes, str] = {}
_routes: dict[bytes, str] = {}


def _remember(cache: dict[bytes, str], raw: bytes, encoding: str) -> str:
    if len(cache) >= TEXT_CACHE_ENTRIES:
        cache.clear()
    text = cache[raw] = text_field(raw, encoding)
    return text


def _load_batch() -> ModuleType | None:
    """The C batch decoder, unless it was not built (no compiler) or WSGIWATCH_PURE_PYTHON
    asks for the Python path (as for the worker's accelerator)."""
    if os.environ.get("WSGIWATCH_PURE_PYTHON", "") not in ("", "0"):
        return None
    try:
        from wsgiwatch.spool import _batch
    except ImportError:
        return None
    return _batch


#: ``wsgiwatch.spool._batch``, or None: :func:`decode_block` then decodes in Python.
batch: ModuleType | None = _load_batch()


def decode_block(pid: int, first_seq: int, data: bytes) -> list[Record]:
    """The records of ``data``, whole ring entries whose stamps the reader has checked,
    the first of them sequence ``first_seq``: in C when :data:`batch` is there, else
    :func:`decode_rows` (the same records: tests/spool/test_batch_decode.py)."""
    if batch is not None:
        records: list[Record] = batch.decode(
            Record,
            pid,
            first_seq,
            data,
            _METHOD_NAMES,
            _SOURCE_NAMES,
            _peers,
            _routes,
            TEXT_CACHE_ENTRIES,
        )
        return records
    whole = memoryview(data)[: len(data) - len(data) % fmt.RECORD_SIZE]  # as the C one
    return decode_rows(pid, zip(itertools.count(first_seq), RECORD_ROW.iter_unpack(whole)))


def decode_rows(pid: int, rows: Iterable[tuple[int, Row]]) -> list[Record]:
    """Records from ``(sequence, RECORD_ROW fields)`` pairs of ``pid``'s ring (whose
    stamps the reader has checked), in one loop: the sidecar's per-record decoding."""
    methods, sources, new = _METHOD_NAMES, _SOURCE_NAMES, _new_record
    peers, routes = _peers, _routes
    out: list[Record] = []
    append = out.append
    for seq, row in rows:
        (
            request,
            entry,
            accept,
            arrival,
            tid,
            peer_port,
            method,
            source,
            peer_raw,
            route_raw,
            headers,
            exit_,
            proxy,
            nbytes,
            status,
            flags,
            server_port,
            slot,
            _stamp,
        ) = row
        peer = peers.get(peer_raw)
        if peer is None:
            peer = _remember(peers, peer_raw, "ascii")
        route = routes.get(route_raw)
        if route is None:
            route = _remember(routes, route_raw, "utf-8")
        append(
            new(
                Record,
                (
                    seq,
                    pid,
                    request,
                    accept,
                    arrival,
                    entry,
                    headers,
                    exit_,
                    proxy,
                    nbytes,
                    tid,
                    slot,
                    status,
                    flags,
                    peer_port,
                    server_port,
                    methods[method],
                    sources[source],
                    peer,
                    route,
                ),
            )
        )
    return out
