"""Route labels from web frameworks: the route template, not the raw path, in each record.

Each integration puts the template of the route that served the request (``/users/<int:id>``)
in ``environ["wsgiwatch.route"]`` (:data:`wsgiwatch.ROUTE_KEY`), where :class:`~wsgiwatch.WSGIWatch`
reads it when the request finishes. Templates keep Prometheus labels few and meaningful; a
request without one is labelled by its path with identifier-like segments folded (``:id``).

- Flask: :class:`wsgiwatch.integrations.flask.WSGIWatchFlask`;
- Django: ``"wsgiwatch.integrations.django.RouteMiddleware"`` in ``MIDDLEWARE``.

Requests that match no route (404, 405, Flask's trailing-slash redirects) are labelled
:data:`UNMATCHED`, not by their path: scanners probing ``/wp-login.php`` and friends would
otherwise make a label value per probe. Pass ``unmatched=None`` to keep the folded path.

This package imports no framework: each module imports its own only when you import it.
"""

from __future__ import annotations

from typing import Final

__all__ = ["UNMATCHED", "mounted"]

#: The route of a request that matched no route of the app.
UNMATCHED: Final = "<unmatched>"


def mounted(script_name: object, template: str) -> str:
    """The template as seen from outside: under ``SCRIPT_NAME`` when the app is mounted at a
    prefix, like the folded path WSGIWatch stores when no template is given."""
    if script_name and isinstance(script_name, str):
        return script_name.rstrip("/") + template
    return template
