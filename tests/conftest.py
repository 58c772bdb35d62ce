from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from typing import Any

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def spool_dir() -> Iterator[str]:
    """A private, empty spool directory (mode 0700), removed afterwards."""
    from support.middleware_support import private_dir

    with private_dir() as d:
        yield d


@pytest.fixture
def watch_dir(spool_dir: str) -> Iterator[str]:
    """``spool_dir``, and this process's writer for it closed afterwards (for tests that
    run WSGIWatch in this process)."""
    from support.middleware_support import forget_spool

    yield spool_dir
    forget_spool(spool_dir)


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A module's real gunicorn gthread + ``wsgiwatch sidecar`` (hol_scenario.Stack)."""
    from support.hol_scenario import stack

    spool = tmp_path_factory.mktemp("spool")
    spool.chmod(0o700)
    with stack(str(spool)) as s:
        yield s


@pytest.fixture(params=["c", "python"])
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> type:
    """Run the test against both implementations of WSGIWatch: the C accelerator's (what
    users get) and the pure-Python one (what runs without a compiler). The test module's
    ``WSGIWatch`` is swapped for the one under test."""
    from wsgiwatch.worker import accelerator, middleware

    if request.param == "c":
        # CI builds the accelerator: its absence is a failure there, never a quiet skip.
        assert accelerator.speedups is not None, "wsgiwatch.worker._speedups is not built"
        cls: type = middleware.WSGIWatch
    else:
        cls = middleware.PythonWSGIWatch
    monkeypatch.setattr(request.module, "WSGIWatch", cls)
    return cls
