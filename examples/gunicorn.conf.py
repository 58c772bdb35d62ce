# gunicorn -c examples/gunicorn.conf.py examples.wsgi:application
#
# gthread workers accept connections greedily: a worker busy with a slow request keeps
# accepting, and the fast requests it accepted wait behind the slow one while the other
# worker may sit idle. wsgiwatch shows it; this config turns on its exact accept times.
from wsgiwatch.gunicorn_config import post_worker_init  # noqa: F401  (the accept hook)

bind = "127.0.0.1:8000"
workers = 2
worker_class = "gthread"
threads = 1
