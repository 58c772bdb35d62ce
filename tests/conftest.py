from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def spool_dir() -> Iterator[str]:
    """A private, empty spool directory (mode 0700), removed afterwards."""
    with tempfile.TemporaryDirectory(
        prefix="wsgiwatch-test-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None
    ) as d:
        os.chmod(d, 0o700)
        yield d
