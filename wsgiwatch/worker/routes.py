"""Turning a request path into a low-cardinality route, and caching the bytes we store.

A framework that knows its route template puts it in ``environ["wsgiwatch.route"]``
(``/users/<int:id>``); without one we fold the path: segments that look like identifiers
(numbers, UUIDs, long hex strings) become ``:id``. The query string is never part of it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

ROUTE_BYTES: Final = 64
ID_SEGMENT: Final = ":id"

_ID_LIKE = re.compile(
    r"""^(?:
        \d+                                                   # 42
      | [0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}  # uuid
      | [0-9a-fA-F]{16,}                                       # hashes, object ids
      | [0-9]+[-_.][0-9a-zA-Z_.-]*\d[0-9a-zA-Z_.-]*            # 2024-01-02, 1.2.3
    )$""",
    re.VERBOSE,
)


def fold_path(path: str) -> str:
    """``/users/42/orders/9f1c...`` -> ``/users/:id/orders/:id``."""
    if not path:
        return "/"
    parts = path.split("/")
    for i, part in enumerate(parts):
        if part and _ID_LIKE.match(part):
            parts[i] = ID_SEGMENT
    return "/".join(parts)


def truncate_utf8(data: bytes, limit: int) -> bytes:
    """Cut ``data`` to at most ``limit`` bytes without splitting a UTF-8 character."""
    if len(data) <= limit:
        return data
    cut = limit
    # Step back over continuation bytes (10xxxxxx) to the start of a character.
    while cut > 0 and (data[cut] & 0xC0) == 0x80:
        cut -= 1
    return data[:cut]


def wsgi_str_to_bytes(value: str) -> bytes:
    """PEP 3333 carries raw bytes in str as latin-1; recover them (odd environs: replace)."""
    return value.encode("latin-1", "replace")


class BytesCache:
    """A bounded str -> bytes cache, so the hot path encodes each distinct value once.

    Full means cleared: a flood of distinct paths costs a recomputation each, never memory.
    """

    __slots__ = ("_data", "_limit", "_make")

    def __init__(self, make: Callable[[str], bytes], limit: int = 2048) -> None:
        self._data: dict[str, bytes] = {}
        self._limit = limit
        self._make = make

    @property
    def entries(self) -> dict[str, bytes]:
        """The cache itself (cleared in place, never replaced): the C path reads it."""
        return self._data

    def get(self, key: str) -> bytes:
        try:
            return self._data[key]
        except KeyError:
            pass
        value = self._make(key)
        if len(self._data) >= self._limit:
            self._data.clear()
        self._data[key] = value
        return value


def path_route_bytes(path: str) -> bytes:
    """Route bytes stored for a request whose app gave no template."""
    return truncate_utf8(wsgi_str_to_bytes(fold_path(path)), ROUTE_BYTES)


def template_route_bytes(template: str) -> bytes:
    """Route bytes for a framework's template (a normal str, not latin-1 transport)."""
    return truncate_utf8(template.encode("utf-8", "replace"), ROUTE_BYTES)


def peer_bytes(addr: str) -> bytes:
    return addr.encode("ascii", "replace")[:40]
