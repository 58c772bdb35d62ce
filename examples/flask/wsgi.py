"""The Flask app with wsgiwatch: the two lines marked below. From the repository root:

    gunicorn -c examples/gunicorn.conf.py --chdir examples/flask wsgi:application

Each request is recorded under its URL rule (``/users/<int:user_id>``), not its raw path.
"""

from app import app

from wsgiwatch.integrations.flask import WSGIWatchFlask  # 1: import

WSGIWatchFlask(app, wrap=True)  # 2: label routes, wrap app.wsgi_app in WSGIWatch

application = app
