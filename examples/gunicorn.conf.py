# gunicorn's config, with wsgiwatch's accept hook. From the repository root:
#
#   gunicorn -c examples/gunicorn.conf.py --chdir examples/flask wsgi:application
#   gunicorn -c examples/gunicorn.conf.py --chdir examples/django exampleproject.wsgi
#   gunicorn -c examples/gunicorn.conf.py examples.wsgi:application
#
# Command-line flags win over this file (--bind 0.0.0.0:8000 in a container).
#
# gthread workers accept connections greedily: a worker busy with a slow request keeps
# accepting, and the fast requests it accepted wait behind the slow one while the other
# worker may sit idle. wsgiwatch shows it happen; the hook below gives it exact accept times
# and lets the sidecar see "accepted, not started" while it happens.
from wsgiwatch.gunicorn_config import post_worker_init  # noqa: F401  (the accept hook)

bind = "127.0.0.1:8000"
workers = 2
worker_class = "gthread"
threads = 1
