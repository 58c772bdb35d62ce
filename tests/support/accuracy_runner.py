"""``python -m support.accuracy_runner --server waitress|cheroot --port N --threads N
[--hook] module:app``: a single-process server with the accuracy tests' accept truth
(:mod:`support.truth_accept`) installed before it starts; ``--hook`` serves waitress the
opt-in way (``wsgiwatch.accept_hook.serve_waitress``)."""

from __future__ import annotations

import argparse
import importlib

from support import truth_accept


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--server", choices=("waitress", "cheroot"), required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hook", action="store_true")
    parser.add_argument("app")
    args = parser.parse_args()
    truth_accept.install(args.server)
    module, _, name = args.app.partition(":")
    app = getattr(importlib.import_module(module), name or "application")
    if args.server == "cheroot":
        if args.hook:
            parser.error("cheroot has no opt-in accept hook")
        from cheroot import wsgi

        wsgi.Server(("127.0.0.1", args.port), app, numthreads=args.threads).start()
        return
    kwargs = {"host": "127.0.0.1", "port": args.port, "threads": args.threads, "_quiet": True}
    if args.hook:
        from wsgiwatch.accept_hook import serve_waitress

        serve_waitress(app, **kwargs)
    else:
        import waitress

        waitress.serve(app, **kwargs)


if __name__ == "__main__":
    main()
