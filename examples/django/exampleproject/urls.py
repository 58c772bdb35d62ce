from __future__ import annotations

import time

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path


def index(request: HttpRequest) -> HttpResponse:
    return HttpResponse("hello\n", content_type="text/plain")


def user(request: HttpRequest, pk: int) -> JsonResponse:
    return JsonResponse({"id": pk})


def report(request: HttpRequest) -> HttpResponse:
    time.sleep(2.0)  # a slow report, an upstream call, a big upload...
    return HttpResponse("report\n", content_type="text/plain")


def healthz(request: HttpRequest) -> HttpResponse:
    return HttpResponse("ok\n", content_type="text/plain")


urlpatterns = [
    path("", index),
    path("users/<int:pk>/", user),
    path("report/", report),
    path("healthz", healthz),
]
