"""``python -m support.waitress_runner [--hook] --port N --threads N module:app`` for the tests."""

from __future__ import annotations

import argparse
import importlib

import waitress

from wsgiwatch.worker.accept_hook import serve_waitress


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--hook", action="store_true")
    parser.add_argument("app")
    args = parser.parse_args()
    module, _, name = args.app.partition(":")
    app = getattr(importlib.import_module(module), name or "application")
    kwargs = {"host": "127.0.0.1", "port": args.port, "threads": args.threads, "_quiet": True}
    if args.hook:
        serve_waitress(app, **kwargs)
    else:
        waitress.serve(app, **kwargs)


if __name__ == "__main__":
    main()
