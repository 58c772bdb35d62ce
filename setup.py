"""The optional C accelerators (the middleware's per-request path, the sidecar's inet_diag
parser and record decoding); the sdist's symlinks.

Everything else is in pyproject.toml. ``optional=True``: without a compiler the build goes
on and wsgiwatch uses its pure-Python twins (wsgiwatch/worker/python_path.py, which records the
same bytes; wsgiwatch/kernel/netlink.py and wsgiwatch/spool/record_batch.py, which parse the
same records), only slower.
"""

import os
import sysconfig
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.sdist import sdist


class SdistWithSymlinks(sdist):
    """The sdist, with the tests' symlinks as symlinks.

    The fake /proc the kernel tests read has fd links such as ``3 -> socket:[32604]``, which
    point nowhere; setuptools leaves out anything that is not a regular file, so the tests
    would fail from an unpacked sdist. The links are put back into the tree it archives,
    except those to an absolute path (``0 -> /dev/null``): pip refuses an sdist with one.
    """

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        for link in sorted(Path("tests").rglob("*")):
            copy = Path(base_dir) / link
            if link.is_symlink() and not copy.is_symlink():
                target = os.readlink(link)
                if os.path.isabs(target):
                    continue
                copy.parent.mkdir(parents=True, exist_ok=True)
                os.symlink(target, copy)


# A free-threaded build (3.13t and later): the C path relies on the GIL, so none is built.
gil_free = bool(sysconfig.get_config_var("Py_GIL_DISABLED"))

setup(
    cmdclass={"sdist": SdistWithSymlinks},
    ext_modules=[]
    if gil_free
    else [
        Extension(
            "wsgiwatch.worker._speedups",
            ["wsgiwatch/worker/_speedups.c"],
            depends=["wsgiwatch/worker/_layout.h"],  # generated from wsgiwatch/spool/layout.py
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        ),
        # The sidecar's inet_diag parser (wsgiwatch/kernel/netlink.py is its Python twin).
        Extension(
            "wsgiwatch.kernel._diag",
            ["wsgiwatch/kernel/_diag.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        ),
        # The sidecar's batch decoder of records (its Python twin: record_batch.decode_rows).
        Extension(
            "wsgiwatch.spool._batch",
            ["wsgiwatch/spool/_batch.c"],
            depends=["wsgiwatch/worker/_layout.h"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
        ),
    ],
)
