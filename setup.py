"""The optional C accelerator of the middleware's per-request path.

Everything else is in pyproject.toml. ``optional=True``: without a compiler the build goes
on and WSGIWatch uses its pure-Python path (wsgiwatch/middleware.py), which records the same
bytes, only slower.
"""

import sys

from setuptools import Extension, setup

gil_free = bool(getattr(sys, "_is_gil_enabled", lambda: True)() is False)

setup(
    ext_modules=[]
    if gil_free  # the C path relies on the GIL; free-threaded builds use the Python one
    else [
        Extension(
            "wsgiwatch._speedups",
            ["wsgiwatch/_speedups.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ],
)
