"""Django: label each request with its URL pattern (``/users/<int:pk>/``).

    # settings.py
    MIDDLEWARE = [
        "wsgiwatch.integrations.django.RouteMiddleware",
        ...
    ]

    # wsgi.py
    from wsgiwatch import WSGIWatch
    application = WSGIWatch(get_wsgi_application())

Django keeps the WSGI environ as ``request.META``, so the middleware writes the route where
WSGIWatch reads it. The route is ``request.resolver_match.route``: the pattern the URL
resolved to, included prefixes joined (``api/users/<int:pk>/``; a ``re_path`` gives its
regular expression), with a leading ``/`` added so it reads like a path.

It is set in ``process_view``, as soon as Django has resolved the URL, and checked again
when the response comes back through the middleware: a middleware placed earlier whose
``process_view`` answers first (``CsrfViewMiddleware``'s 403) still leaves a resolved URL
to label by. A URL that resolves to nothing (404) is labelled
:data:`~wsgiwatch.integrations.UNMATCHED`; a subclass with ``unmatched = None`` leaves such
requests to WSGIWatch's folded path instead.

Put it first in ``MIDDLEWARE`` so responses of every other middleware pass through it.
Nothing from Django is imported: the middleware only reads attributes Django's request has.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol

from wsgiwatch.integrations import UNMATCHED, mounted
from wsgiwatch.worker.middleware import ROUTE_KEY

__all__ = ["RouteMiddleware", "django_route"]


class _ResolverMatch(Protocol):
    @property
    def route(self) -> str | None: ...


class _Request(Protocol):
    """What this middleware uses of ``django.http.HttpRequest``."""

    @property
    def META(self) -> dict[str, Any]: ...  # Django's name

    @property
    def resolver_match(self) -> _ResolverMatch | None: ...


def django_route(pattern: str) -> str:
    """``users/<int:pk>/`` -> ``/users/<int:pk>/``; ``^legacy/(?P<id>\\d+)$`` keeps its
    anchor after the slash (``/^legacy/...``), so a regex stays recognisable."""
    return pattern if pattern.startswith("/") else "/" + pattern


class RouteMiddleware:
    """New-style Django middleware setting ``request.META["wsgiwatch.route"]``."""

    #: Label for requests whose URL resolved to no view; None: WSGIWatch folds the path.
    unmatched: ClassVar[str | None] = UNMATCHED

    def __init__(self, get_response: Callable[[Any], Any]) -> None:
        self.get_response = get_response

    def __call__(self, request: _Request) -> Any:
        response = self.get_response(request)
        meta = request.META
        if ROUTE_KEY not in meta:
            self._label(meta, getattr(request, "resolver_match", None))
        return response

    def process_view(
        self,
        request: _Request,
        view_func: Callable[..., Any],
        view_args: Sequence[Any],
        view_kwargs: Mapping[str, Any],
    ) -> None:
        self._label(request.META, request.resolver_match)

    def _label(self, meta: dict[str, Any], match: _ResolverMatch | None) -> None:
        if match is None:
            if self.unmatched is not None:
                meta[ROUTE_KEY] = self.unmatched
            return
        route = match.route
        if route is not None:  # a resolved view always has one; be tolerant of odd resolvers
            meta[ROUTE_KEY] = mounted(meta.get("SCRIPT_NAME"), django_route(route))
