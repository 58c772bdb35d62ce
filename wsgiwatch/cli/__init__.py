"""The ``wsgiwatch`` command and its subcommands, one module each.

:mod:`.main` parses the command line and dispatches; :mod:`.client` talks to a running
sidecar for ``diagnose``, ``top`` and ``timeline``.
"""

from wsgiwatch.cli.main import build_parser, main

__all__ = ["build_parser", "main"]
