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


@pytest.fixture(params=["c", "python"])
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> type:
    """Run the test against both implementations of WSGIWatch: the C accelerator's (what
    users get) and the pure-Python one (what runs without a compiler). The test module's
    ``WSGIWatch`` is swapped for the one under test."""
    from wsgiwatch import accelerator, middleware

    if request.param == "c":
        # CI builds the accelerator: its absence is a failure there, never a quiet skip.
        assert accelerator.speedups is not None, "wsgiwatch._speedups is not built"
        cls: type = middleware.WSGIWatch
    else:
        cls = middleware.PythonWSGIWatch
    monkeypatch.setattr(request.module, "WSGIWatch", cls)
    return cls
