"""Waiting on spools from a test: for a worker's file to be whole, for records to land."""

from __future__ import annotations

import time

from wsgiwatch.errors import SpoolFormatError
from wsgiwatch.spool.reader import Record, SpoolReader, list_spools


def wait_for_spool(directory: str, timeout: float = 10.0) -> str:
    """The one spool in ``directory``, once a reader can open it (within ``timeout``).

    A spool being created is refused by SpoolReader (still empty, or no magic yet): a
    reader tries again, as this does.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        paths = list_spools(directory)
        if paths:
            (path,) = paths
            try:
                SpoolReader(path, track=False).close()
            except SpoolFormatError:
                pass
            else:
                return path
        time.sleep(0.01)
    raise TimeoutError(f"no whole spool in {directory} after {timeout} s")


def collect(reader: SpoolReader, count: int, timeout: float = 5.0) -> list[Record]:
    """The next ``count`` records. A worker writes a record when the server calls
    ``close()`` on the response, which may be a moment after its client read the last
    byte: so poll, within ``timeout``."""
    records: list[Record] = []
    deadline = time.monotonic() + timeout
    while len(records) < count and time.monotonic() < deadline:
        records.extend(reader.read_records().records)
        time.sleep(0.005)
    assert len(records) == count, records
    return records
