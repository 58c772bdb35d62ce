"""``python -m support.bjoern_runner --port N module:app`` for the tests: bjoern, a WSGI
server in C on libev, one process, one thread, the app called from its event loop."""

from __future__ import annotations

import argparse
import importlib

import bjoern


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("app")
    args = parser.parse_args()
    module, _, name = args.app.partition(":")
    app = getattr(importlib.import_module(module), name or "application")
    bjoern.run(app, "127.0.0.1", args.port)  # serves until the process is stopped


if __name__ == "__main__":
    main()
