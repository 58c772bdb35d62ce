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
# worker may sit idle. wsgiwatch shows it happen.
#
# The accept hook installs itself when wsgi.py wraps the app in WSGIWatch. post_worker_init
# also opens each worker's spool as it starts, so the sidecar sees idle workers; worker_abort
# and worker_exit leave a note saying how a worker ended, so requests lost with it are
# counted by fate (timed_out, exited; without them: killed).
from wsgiwatch.gunicorn_config import post_worker_init, worker_abort, worker_exit  # noqa: F401

bind = "127.0.0.1:8000"
workers = 2
worker_class = "gthread"
threads = 1
