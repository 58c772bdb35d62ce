"""WSGI config, as ``django-admin startproject`` writes it, plus the two lines marked below.
From the repository root:

    gunicorn -c examples/gunicorn.conf.py --chdir examples/django exampleproject.wsgi

With ``RouteMiddleware`` in MIDDLEWARE (settings.py), each request is recorded under its URL
pattern (``/users/<int:pk>/``), not its raw path.
"""

import os

from django.core.wsgi import get_wsgi_application

from wsgiwatch import WSGIWatch  # 1: import

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "exampleproject.settings")

application = WSGIWatch(get_wsgi_application())  # 2: wrap
