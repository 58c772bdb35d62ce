"""Routes cannot carry secrets: what fold_path leaves of tokens, session ids, JWTs, e-mail
addresses and disguised query strings, and what a real gunicorn + sidecar publish of them."""

from __future__ import annotations

import base64
import random
import secrets
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support.hol_scenario import wait_until
from support.servers import gunicorn, sidecar

from wsgiwatch.worker.routes import fold_path, path_route_bytes

JWT = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.eyJzdWIiOiIxMjM0NTY3ODkwIiwibmFtZSI6IkpvaG4ifQ."
    "SflKxwRJSMeKKF2QT4fwpMeJf36POk6yJV_adQssw5c"
)


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/reset-password/Zx8vQ2rT5yU1iO0pA3sD", "/reset-password/:token"),
        (f"/session/{JWT}", "/session/:token"),
        ("/users/jane.doe@example.com/profile", "/users/:email/profile"),
        ("/shop;jsessionid=0A1B2C3D4E5F6A7B8C9D/cart", "/shop/cart"),
        ("/shop/cart;jsessionid=0A1B2C3D4E5F", "/shop/cart"),
        ("/?token=s3cr3t", "/"),  # /%3Ftoken%3Ds3cr3t, decoded by the server
        ("/login#access_token=abc", "/login"),
        ("/a/token=s3cr3t&x=1", "/a/:param"),
        ("/files/c2VjcmV0IHRleHQ=", "/files/:token"),  # base64, padded, no digit
        ("/orders/550e8400-e29b-41d4-a716-446655440000", "/orders/:id"),
        ("/blobs/9f86d081884c7d659a2feaa0c55ad015", "/blobs/:id"),
        ("/commit/1a2b3c4d", "/commit/:id"),
        ("/users/42/orders/7", "/users/:id/orders/:id"),
        ("/p/a-very-long-slug-that-is-probably-unique-per-page", "/p/:token"),
        # Words stay words.
        ("/reset-password", "/reset-password"),
        ("/api/v2/getUserProfile", "/api/v2/getUserProfile"),
        ("/static/app.min.js", "/static/app.min.js"),
        ("/commit/deadbeef", "/commit/deadbeef"),
        ("", "/"),
    ],
)
def test_fold_path(path: str, route: str) -> None:
    assert fold_path(path) == route


def _tokens(rng: random.Random) -> dict[str, Callable[[], str]]:
    return {
        "token_urlsafe(16)": lambda: base64.urlsafe_b64encode(rng.randbytes(16)).decode(),
        "token_urlsafe(32)": lambda: base64.urlsafe_b64encode(rng.randbytes(32)).decode(),
        "base64 of 12 bytes": lambda: base64.b64encode(rng.randbytes(12)).decode(),
        "token_hex(8)": lambda: rng.randbytes(8).hex(),
        "uuid4": lambda: str(uuid.UUID(bytes=rng.randbytes(16), version=4)),
        "e-mail": lambda: f"user{rng.randrange(10**6)}@example.org",
    }


#: Tokens that fold away, at least, out of 10,000 of each kind (a seeded sample, so the
#: figure is stable): the rest are random strings that happen to read as words.
FOLDED_AT_LEAST = {
    "token_urlsafe(16)": 0.999,
    "token_urlsafe(32)": 1.0,
    "base64 of 12 bytes": 0.995,
    "token_hex(8)": 1.0,
    "uuid4": 1.0,
    "e-mail": 1.0,
}


@pytest.mark.parametrize("kind", sorted(FOLDED_AT_LEAST))
def test_random_secrets_fold_away(kind: str) -> None:
    make = _tokens(random.Random(kind))[kind]
    kept = []
    for _ in range(10_000):
        secret = make().replace("/", "_").rstrip("=") + ("=" if kind.startswith("base64") else "")
        if secret in fold_path(f"/reset/{secret}"):
            kept.append(secret)
    assert len(kept) <= (1 - FOLDED_AT_LEAST[kind]) * 10_000, kept[:5]


@given(word=st.sampled_from(["reset-password", "getUserProfile", "notifications", "v2"]))
def test_words_stay(word: str) -> None:
    assert fold_path(f"/api/{word}") == f"/api/{word}"


def _get(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.read()
    except urllib.error.HTTPError as exc:
        return exc.read()


def test_a_real_server_publishes_no_secret_from_a_path(spool_dir: str) -> None:
    secrets_in_paths = {
        "Zx8vQ2rT5yU1iO0pA3sD": "/reset-password/Zx8vQ2rT5yU1iO0pA3sD",
        JWT: f"/session/{JWT}",
        "jane.doe@example.com": "/users/jane.doe@example.com/profile",
        "0A1B2C3D4E5F6A7B8C9D": "/shop;jsessionid=0A1B2C3D4E5F6A7B8C9D",
        "s3cr3tvalue": "/%3Ftoken%3Ds3cr3tvalue",
        "token=": "/x/%3Ftoken%3Dabc",
    }
    side, port = sidecar(spool_dir)
    with gunicorn("apps.basic:application", spool_dir) as app, side:
        for path in secrets_in_paths.values():
            assert _get(app.url + path) == b"fast\n"
        api = f"http://127.0.0.1:{port}/api/requests?since=600"
        wait_until(lambda: _get(api).count(b'"route"') >= len(secrets_in_paths), timeout=15)
        published = _get(api) + _get(f"http://127.0.0.1:{port}/metrics")
        for secret in secrets_in_paths:
            assert secret.encode() not in published, secret
        assert b'"/reset-password/:token"' in published
        assert b'"/users/:email/profile"' in published
        assert b'"/shop"' in published


def test_route_bytes_fold_before_truncating() -> None:
    long_token = secrets.token_urlsafe(80)
    assert path_route_bytes(f"/r/{long_token}") == b"/r/:token"
