"""Settings of a minimal Django project; the wsgiwatch line is the first of MIDDLEWARE."""

from __future__ import annotations

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "example-only-set-DJANGO_SECRET_KEY")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")

INSTALLED_APPS: list[str] = []
MIDDLEWARE = [
    # Labels each request with its URL pattern (users/<int:pk>/) for wsgiwatch. First, so
    # that responses from every other middleware pass through it.
    "wsgiwatch.integrations.django.RouteMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
]
ROOT_URLCONF = "exampleproject.urls"
WSGI_APPLICATION = "exampleproject.wsgi.application"
USE_TZ = True
