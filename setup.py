"""The optional C accelerator of the middleware's per-request path.

Everything else is in pyproject.toml. ``optional=True``: without a compiler the build goes
on and WSGIWatch uses its pure-Python path (wsgiwatch/worker/python_path.py), which records the same
bytes, only slower.
"""

import sysconfig

from setuptools import Extension, setup

# A free-threaded build (3.13t and later): the C path relies on the GIL, so none is built.
gil_free = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))

setup(
    ext_modules=[]
    if gil_free
    else [
        Extension(
            "wsgiwatch.worker._speedups",
            ["wsgiwatch/worker/_speedups.c"],
            depends=["wsgiwatch/worker/_layout.h"],  # generated from wsgiwatch/spool/layout.py
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        )
    ],
)
