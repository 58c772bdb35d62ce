"""Flask: label each request with its URL rule (``/users/<int:id>``), optionally record it.

    from wsgiwatch.integrations.flask import WSGIWatchFlask

    WSGIWatchFlask(app, wrap=True)  # route labels, and app.wsgi_app wrapped in WSGIWatch

``WSGIWatchFlask(app)`` alone only labels routes: use it when the app is already wrapped
elsewhere (``application = WSGIWatch(app)`` in ``wsgi.py``), since wrapping twice would
record every request twice. ``wrap=True`` does the documented Flask thing for WSGI
middleware, ``app.wsgi_app = WSGIWatch(app.wsgi_app, ...)`` on this one app object; no Flask
class is patched. The application factory pattern works too: ``ext = WSGIWatchFlask()``,
then ``ext.init_app(app)``.

The label is set by a ``before_request`` function placed first, so it is there even when
another ``before_request`` function answers the request itself. Flask matches the URL
before that point: ``request.url_rule`` is the rule (blueprint prefixes included), or None
when nothing matched (404, 405, a trailing-slash redirect), which is labelled
:data:`~wsgiwatch.integrations.UNMATCHED` unless ``unmatched=None`` is given.
"""

from __future__ import annotations

from typing import Any

from flask import Flask, request

from wsgiwatch.integrations import UNMATCHED, mounted
from wsgiwatch.worker.middleware import ROUTE_KEY, WSGIWatch

__all__ = ["EXTENSION_KEY", "WSGIWatchFlask"]

#: Where the extension registers itself in ``app.extensions``.
EXTENSION_KEY = "wsgiwatch"


class WSGIWatchFlask:
    """Flask extension: the route template in ``environ["wsgiwatch.route"]``.

    ``wrap``: also wrap ``app.wsgi_app`` in :class:`~wsgiwatch.WSGIWatch`, built with
    ``watch_options`` (``spool_dir``, ``capacity``, ...). ``unmatched``: the label of
    requests that matched no rule; None leaves them to WSGIWatch's folded path.
    """

    def __init__(
        self,
        app: Flask | None = None,
        *,
        wrap: bool = False,
        unmatched: str | None = UNMATCHED,
        **watch_options: Any,
    ) -> None:
        self.wrap = wrap
        self.unmatched = unmatched
        self.watch_options = watch_options
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> None:
        """Register the labelling hook on ``app`` (and wrap it when asked). Calling it again
        for the same app changes nothing; a second extension on one app is refused."""
        registered = app.extensions.get(EXTENSION_KEY)
        if registered is self:
            return
        if registered is not None:
            raise RuntimeError(f"wsgiwatch is already set up on the Flask app {app.name!r}")
        app.extensions[EXTENSION_KEY] = self
        # First in line: a before_request function that returns a response stops the ones
        # after it, and such a request still deserves its route's label.
        app.before_request_funcs.setdefault(None, []).insert(0, self._label_request)
        if self.wrap and not isinstance(app.wsgi_app, WSGIWatch):
            app.wsgi_app = WSGIWatch(app.wsgi_app, **self.watch_options)  # type: ignore[method-assign]

    def _label_request(self) -> None:
        environ = request.environ
        rule = request.url_rule
        if rule is not None:
            environ[ROUTE_KEY] = mounted(environ.get("SCRIPT_NAME"), rule.rule)
        elif self.unmatched is not None:
            environ[ROUTE_KEY] = self.unmatched
