from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.sidecar_support import FakeProc


@pytest.fixture
def proc() -> Iterator[FakeProc]:
    """A fake procfs root, where fake workers live while listed (removed afterwards)."""
    fake = FakeProc()
    yield fake
    fake.cleanup()
