"""A Flask app served by real gunicorn in the integration tests (``integrations.flask_app``).

Routes cover what labelling must get right: converters, a blueprint prefix, a path
converter, a view that raises, a streamed body (the record is written at ``close()``), and a
``before_request`` function registered before the extension that answers by itself.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

from flask import Blueprint, Flask, Response, abort, request

from wsgiwatch.integrations.flask import WSGIWatchFlask


def create_app() -> Flask:
    app = Flask(__name__)

    @app.before_request
    def guard() -> tuple[str, int] | None:
        # Registered before the extension: answering here must not cost the route label.
        if request.path.startswith("/guarded/"):
            return "forbidden\n", 403
        return None

    @app.get("/")
    def index() -> str:
        return "index\n"

    @app.get("/users/<int:id>")
    def user(id: int) -> str:
        if id == 0:
            abort(404)  # a matched route answering 404 keeps its template
        return f"user {id}\n"

    @app.get("/files/<path:name>")
    def files(name: str) -> str:
        return f"file {name}\n"

    @app.get("/guarded/<name>")
    def guarded(name: str) -> str:
        return "never reached\n"

    @app.get("/boom")
    def boom() -> str:
        raise RuntimeError("boom")

    @app.get("/stream/<int:n>")
    def stream(n: int) -> Response:
        def chunks() -> Iterator[str]:
            for i in range(n):
                yield f"chunk {i}\n"

        return Response(chunks(), mimetype="text/plain")

    api = Blueprint("api", __name__, url_prefix="/api")

    @api.get("/items/<uuid:item_id>")
    def item(item_id: uuid.UUID) -> str:
        return f"item {item_id}\n"

    app.register_blueprint(api)
    return app


app = create_app()
WSGIWatchFlask(app, wrap=True)
application = app
