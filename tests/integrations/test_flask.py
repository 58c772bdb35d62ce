"""WSGIWatchFlask: route templates in the records of a real Flask app under real gunicorn,
and the extension's own behaviour in process."""

from __future__ import annotations

import uuid

import pytest
from apps.spools import collect, wait_for_spool
from flask import Flask
from support.servers import gunicorn

from wsgiwatch import ROUTE_KEY, WSGIWatch
from wsgiwatch.integrations import UNMATCHED
from wsgiwatch.integrations.flask import EXTENSION_KEY, WSGIWatchFlask
from wsgiwatch.spool import layout as fmt
from wsgiwatch.spool.reader import SpoolReader

from .served import serve_all

ITEM = str(uuid.UUID(int=42))

# (method, path) -> (status, route stored in the record)
EXPECTED = {
    ("GET", "/"): (200, "/"),
    ("GET", "/users/42"): (200, "/users/<int:id>"),
    ("GET", "/users/0"): (404, "/users/<int:id>"),  # matched, then the view said 404
    ("GET", f"/api/items/{ITEM}"): (200, "/api/items/<uuid:item_id>"),
    ("GET", "/files/a/b/c.txt"): (200, "/files/<path:name>"),
    ("GET", "/guarded/x"): (403, "/guarded/<name>"),
    ("GET", "/boom"): (500, "/boom"),
    ("GET", "/stream/3"): (200, "/stream/<int:n>"),
    ("GET", "/no/such/page/123"): (404, UNMATCHED),
    ("POST", "/users/42"): (405, UNMATCHED),
}


def test_records_carry_flask_url_rules(spool_dir: str) -> None:
    with gunicorn("integrations.flask_app:application", spool_dir) as server:
        served = serve_all(server, list(EXPECTED))
    for key, (status, route) in EXPECTED.items():
        got = served[key]
        assert (got.status, got.record.status) == (status, status), key
        assert (got.record.method, got.record.route) == (key[0], route), key
        assert got.record.flags & fmt.FLAG_ROUTE_TEMPLATE, key


def test_mounted_app_routes_include_script_name(spool_dir: str) -> None:
    with gunicorn(
        "integrations.flask_app:application", spool_dir, env={"SCRIPT_NAME": "/shop"}
    ) as server:
        served = serve_all(server, [("GET", "/shop/users/5"), ("GET", "/shop/nope")])
    assert served["GET", "/shop/users/5"].record.route == "/shop/users/<int:id>"
    assert served["GET", "/shop/nope"].record.route == UNMATCHED


# -- in process ------------------------------------------------------------------------------


def _app_seeing_routes(seen: list[str | None]) -> Flask:
    app = Flask(__name__)

    @app.get("/users/<int:id>")
    def user(id: int) -> str:
        return "ok"

    @app.teardown_request
    def note(_exc: BaseException | None) -> None:
        from flask import request

        seen.append(request.environ.get(ROUTE_KEY))

    return app


def test_label_only_by_default_and_no_double_wrap() -> None:
    seen: list[str | None] = []
    app = _app_seeing_routes(seen)
    original = app.wsgi_app
    ext = WSGIWatchFlask(app)
    assert app.wsgi_app == original  # labels only: wrapping is asked for, never implied
    assert app.extensions[EXTENSION_KEY] is ext
    ext.init_app(app)  # again: nothing changes
    with pytest.raises(RuntimeError, match="already set up"):
        WSGIWatchFlask(app, wrap=True)  # a second extension would label (or record) twice
    assert app.wsgi_app == original
    assert app.before_request_funcs[None].count(ext._label_request) == 1
    client = app.test_client()
    assert client.get("/users/7").status_code == 200
    assert client.get("/nothing").status_code == 404
    assert seen == ["/users/<int:id>", UNMATCHED]


def test_wrap_passes_options_and_factory_pattern(spool_dir: str) -> None:
    ext = WSGIWatchFlask(wrap=True, spool_dir=spool_dir, capacity=2)
    seen: list[str | None] = []
    app = _app_seeing_routes(seen)
    ext.init_app(app)
    assert isinstance(app.wsgi_app, WSGIWatch)
    assert app.wsgi_app.spool_dir == spool_dir
    response = app.test_client().get("/users/7?secret=1")
    response.close()
    with SpoolReader(wait_for_spool(spool_dir), track=False) as reader:
        (record,) = collect(reader, 1)
        assert reader.header().declared_capacity == 2
    assert (record.route, record.status) == ("/users/<int:id>", 200)


def test_an_app_wrapped_already_is_not_wrapped_again(spool_dir: str) -> None:
    app = _app_seeing_routes([])
    app.wsgi_app = WSGIWatch(app.wsgi_app, spool_dir=spool_dir)  # type: ignore[method-assign]
    wrapped = app.wsgi_app
    WSGIWatchFlask(app, wrap=True)
    assert app.wsgi_app is wrapped


@pytest.mark.parametrize("unmatched", [None, "other"])
def test_unmatched_label_can_be_changed(unmatched: str | None) -> None:
    seen: list[str | None] = []
    app = _app_seeing_routes(seen)
    WSGIWatchFlask(app, unmatched=unmatched)
    assert app.test_client().get("/nothing").status_code == 404
    assert seen == [unmatched]
