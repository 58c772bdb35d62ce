"""RouteMiddleware: URL patterns in the records of a real Django project under real
gunicorn, and the middleware's own behaviour on stand-in requests."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from support.servers import gunicorn

from wsgiwatch import ROUTE_KEY
from wsgiwatch.integrations import UNMATCHED
from wsgiwatch.integrations.django import RouteMiddleware, django_route
from wsgiwatch.spool import layout as fmt

from .served import serve_all

EXPECTED = {
    ("GET", "/"): (200, "/"),
    ("GET", "/users/42/"): (200, "/users/<int:pk>/"),
    ("GET", "/users/0/"): (404, "/users/<int:pk>/"),  # resolved, then the view said 404
    ("GET", "/api/v1/items/blue-shoes/"): (200, "/api/v1/items/<slug:slug>/"),  # include()
    ("GET", "/legacy/2019/"): (200, "/^legacy/(?P<year>[0-9]{4})/$"),  # re_path
    ("GET", "/boom/"): (500, "/boom/"),
    ("GET", "/blocked/x/"): (403, "/blocked/<str:name>/"),  # an earlier process_view answered
    ("GET", "/stream/3/"): (200, "/stream/<int:n>/"),
    ("GET", "/no/such/page/123"): (404, UNMATCHED),
    ("POST", "/nowhere/"): (404, UNMATCHED),
}


def test_records_carry_django_url_patterns(spool_dir: str) -> None:
    with gunicorn("integrations.django_app:application", spool_dir) as server:
        served = serve_all(server, list(EXPECTED))
    for key, (status, route) in EXPECTED.items():
        got = served[key]
        assert (got.status, got.record.status) == (status, status), key
        assert (got.record.method, got.record.route) == (key[0], route), key
        assert got.record.flags & fmt.FLAG_ROUTE_TEMPLATE, key


def test_mounted_project_routes_include_script_name(spool_dir: str) -> None:
    with gunicorn(
        "integrations.django_app:application", spool_dir, env={"SCRIPT_NAME": "/site"}
    ) as server:
        served = serve_all(server, [("GET", "/site/users/5/"), ("GET", "/site/nope/")])
    assert served["GET", "/site/users/5/"].record.route == "/site/users/<int:pk>/"
    assert served["GET", "/site/nope/"].record.route == UNMATCHED


# -- on stand-in requests ----------------------------------------------------------------------


def _request(route: str | None, resolved: bool = True, **meta: Any) -> Any:
    match = SimpleNamespace(route=route) if resolved else None
    return SimpleNamespace(META=dict(meta), resolver_match=match)


def _through(middleware: RouteMiddleware, request: Any, *, view: bool) -> Any:
    """What Django does: __call__, and process_view from inside get_response if resolved."""

    def get_response(req: Any) -> str:
        if view:
            assert middleware.process_view(req, lambda r: None, (), {}) is None
        return "response"

    middleware.get_response = get_response
    assert middleware(request) == "response"
    return request.META.get(ROUTE_KEY)


def test_route_set_in_process_view_and_after_short_circuits() -> None:
    mw = RouteMiddleware(lambda r: None)
    assert _through(mw, _request("users/<int:pk>/"), view=True) == "/users/<int:pk>/"
    # an earlier middleware's process_view answered: resolved, but ours never ran
    assert _through(mw, _request("users/<int:pk>/"), view=False) == "/users/<int:pk>/"
    assert _through(mw, _request(None, resolved=False), view=False) == UNMATCHED
    assert _through(mw, _request("", SCRIPT_NAME="/app"), view=True) == "/app/"


def test_unmatched_none_leaves_the_folded_path() -> None:
    class KeepPath(RouteMiddleware):
        unmatched = None

    assert _through(KeepPath(lambda r: None), _request(None, resolved=False), view=False) is None


def test_django_route_adds_one_leading_slash() -> None:
    assert django_route("users/<int:pk>/") == "/users/<int:pk>/"
    assert django_route("/already") == "/already"
    assert django_route("") == "/"
