"""waitress with wsgiwatch's accept hook: ``serve_waitress`` instead of ``waitress.serve``.

    python examples/waitress_serve.py [--listen 127.0.0.1:8080] [--threads 4]

waitress reads each request in its accepting thread, then queues it for its worker threads:
with every thread busy, a fast request waits in that queue behind a slow one. The hook
records when each connection was accepted and when its request was complete, so wsgiwatch
knows how long it waited there.
"""

from __future__ import annotations

import argparse

from wsgi import application  # examples/wsgi.py; import your own app here

from wsgiwatch.accept_hook import serve_waitress


def main() -> None:
    parser = argparse.ArgumentParser(description="waitress with wsgiwatch's accept hook")
    parser.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT to serve on")
    parser.add_argument("--threads", type=int, default=4, help="waitress worker threads")
    args = parser.parse_args()
    serve_waitress(application, listen=args.listen, threads=args.threads)


if __name__ == "__main__":
    main()
