"""Turning a request path into a low-cardinality route that carries no secrets, and caching
the bytes we store.

A framework that knows its route template puts it in ``environ["wsgiwatch.route"]``
(``/users/<int:id>``); without one we fold the path, segment by segment, because a route is
published as a Prometheus label and in the sidecar's API, and paths carry secrets: reset
tokens, session ids, JWTs, e-mail addresses. The query string is never part of it. Folding:

- ``;`` and what follows in a segment (matrix parameters: ``;jsessionid=...``) is dropped;
- the path ends at a ``?`` or ``#`` found in it: PATH_INFO arrives percent-decoded, so
  ``/%3Ftoken%3D...`` reaches us as ``/?token=...``, a query string in disguise;
- numbers, UUIDs, hex strings (8 characters or more, with a digit) become ``:id``;
- JWTs, padded base64, and long opaque segments (16 characters or more of letters and
  digits mixed, base64 or base64url alphabet; or any segment of 32 characters or more,
  e-mail addresses included) become ``:token``;
- a segment holding ``=`` or ``&`` (``key=value`` pairs) becomes ``:param``;
- a segment with ``@`` (an e-mail address or a user handle) becomes ``:email``.

Words stay: ``/reset-password``, ``/getUserProfile``, ``/v2``, ``/2024-report`` is folded
(dates are ids). Templates from frameworks are trusted as they are: they are code.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

ROUTE_BYTES: Final = 64
ID_SEGMENT: Final = ":id"
TOKEN_SEGMENT: Final = ":token"
EMAIL_SEGMENT: Final = ":email"
PARAM_SEGMENT: Final = ":param"
#: A segment this long is folded whatever it holds: no route word is, secrets often are.
LONG_SEGMENT: Final = 32

_ID_LIKE = re.compile(
    r"""^(?:
        \d+                                                   # 42
      | [0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}  # uuid
      | (?=[a-fA-F]*\d)[0-9a-fA-F]{8,}                         # hashes, object ids
      | [0-9]+[-_.][0-9a-zA-Z_.-]*\d[0-9a-zA-Z_.-]*            # 2024-01-02, 1.2.3
    )$""",
    re.VERBOSE,
)
# header.payload[.signature], base64url; headers of JSON start with '{"' = "eyJ".
_JWT = re.compile(r"^eyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*)?$")
# 16+ characters of a base64 / base64url alphabet with both letters and digits in them, or
# any base64 with its padding (encoded text often has no digit).
_OPAQUE = re.compile(
    r"^(?:(?=.*\d)(?=.*[A-Za-z])[A-Za-z0-9_\-+/~.]{16,}=*|[A-Za-z0-9_\-+/]{6,}={1,2})$"
)


_B64_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+~.")
_VOWELS = frozenset("aeiouyAEIOUY")


def _looks_random(part: str) -> bool:
    """16+ characters of the base64url alphabet read as random, not as words: a digit in
    them, or many capitals (``getUserById`` has few), or five consonants in a row (words
    rarely do; random letters almost always do)."""
    if len(part) < 16 or not _B64_CHARS.issuperset(part):
        return False
    letters = [c for c in part if c.isalpha()]
    if not letters:
        return True
    if len(letters) < len(part) and any(c.isdigit() for c in part):
        return True
    if sum(c.isupper() for c in letters) * 100 >= 35 * len(letters):
        return True
    run = 0
    for c in part:
        run = run + 1 if c.isalpha() and c not in _VOWELS else 0
        if run >= 5:
            return True
    return False


def fold_segment(part: str) -> str:
    """One path segment as it may be published (see the module doc)."""
    if ";" in part:
        part = part.split(";", 1)[0]
    if not part:
        return part
    if _ID_LIKE.match(part):
        return ID_SEGMENT
    if len(part) >= LONG_SEGMENT or _JWT.match(part) or _OPAQUE.match(part) or _looks_random(part):
        return TOKEN_SEGMENT
    if "=" in part or "&" in part:
        return PARAM_SEGMENT
    if "@" in part:
        return EMAIL_SEGMENT
    return part


def fold_path(path: str) -> str:
    """``/users/42/orders/9f1c...`` -> ``/users/:id/orders/:id``;
    ``/reset/eyJhbGciOi...`` -> ``/reset/:token``; ``/u/a@b.example`` -> ``/u/:email``."""
    if not path:
        return "/"
    for mark in ("?", "#"):
        if mark in path:
            path = path.split(mark, 1)[0] or "/"
    return "/".join(fold_segment(part) for part in path.split("/"))


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
