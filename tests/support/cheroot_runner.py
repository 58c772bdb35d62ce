"""``python -m support.cheroot_runner --port N --threads N module:app`` for the tests: cheroot, the
server of CherryPy, whose acceptor hands connections to a pool of worker threads."""

from __future__ import annotations

import argparse
import importlib

from cheroot import wsgi


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("app")
    args = parser.parse_args()
    module, _, name = args.app.partition(":")
    app = getattr(importlib.import_module(module), name or "application")
    server = wsgi.Server(("127.0.0.1", args.port), app, numthreads=args.threads)
    server.start()  # serves until the process is stopped


if __name__ == "__main__":
    main()
