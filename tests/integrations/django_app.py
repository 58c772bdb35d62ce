"""A one-file Django project served by real gunicorn in the integration tests
(``integrations.django_app``): settings, URLs and views in this module."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="wsgiwatch-tests-only",
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=[],
    MIDDLEWARE=[
        # Before ours on purpose: its process_view answers first for /blocked/..., and the
        # route must still be labelled.
        f"{__name__}.BlockingMiddleware",
        "wsgiwatch.integrations.django.RouteMiddleware",
        "django.middleware.common.CommonMiddleware",
    ],
    LOGGING_CONFIG=None,
    USE_TZ=True,
)
django.setup()

from django.core.wsgi import get_wsgi_application  # noqa: E402 (after settings)
from django.http import (  # noqa: E402
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseForbidden,
    StreamingHttpResponse,
)
from django.urls import include, path, re_path  # noqa: E402

from wsgiwatch import WSGIWatch  # noqa: E402


class BlockingMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_view(
        self, request: HttpRequest, view: Any, args: Any, kwargs: Any
    ) -> HttpResponse | None:
        if request.path_info.startswith("/blocked/"):
            return HttpResponseForbidden("blocked\n")
        return None


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse("index\n")


def user(request: HttpRequest, pk: int) -> HttpResponse:
    if pk == 0:
        raise Http404("no such user")  # a resolved route answering 404 keeps its pattern
    return HttpResponse(f"user {pk}\n")


def item(request: HttpRequest, slug: str) -> HttpResponse:
    return HttpResponse(f"item {slug}\n")


def legacy(request: HttpRequest, year: str) -> HttpResponse:
    return HttpResponse(f"legacy {year}\n")


def boom(request: HttpRequest) -> HttpResponse:
    raise RuntimeError("boom")


def blocked(request: HttpRequest, name: str) -> HttpResponse:
    return HttpResponse("never reached\n")


def stream(request: HttpRequest, n: int) -> StreamingHttpResponse:
    def chunks() -> Iterator[bytes]:
        for i in range(n):
            yield b"chunk %d\n" % i

    return StreamingHttpResponse(chunks(), content_type="text/plain")


api_patterns = [path("items/<slug:slug>/", item)]

urlpatterns = [
    path("", index),
    path("users/<int:pk>/", user),
    path("api/v1/", include(api_patterns)),
    re_path(r"^legacy/(?P<year>[0-9]{4})/$", legacy),
    path("boom/", boom),
    path("blocked/<str:name>/", blocked),
    path("stream/<int:n>/", stream),
]

application = WSGIWatch(get_wsgi_application())
