"""The release as a user gets it: what scripts/build-dist makes, installed in a fresh venv.

Built once per session: the sdist and, from it, the manylinux wheel (about 10 s) for the
system's python, then a new
virtualenv with only that wheel and its ``demo`` extra (the servers ``wsgiwatch demo`` runs)
installed from the package index, with every C compiler hidden: ``CC=false`` and shims named
like the compilers first on PATH, which fail. The venv lives in a world-readable directory,
so that the example image's user (uid 10001) can run it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
# The wheel is built for, and installed into, the distribution's python (Debian's, in
# /usr/bin), as a user or an image would use it: not the developers' (under /root, which
# the image's user cannot reach).
PYTHON = "/usr/bin/python3"
COMPILERS = ("cc", "gcc", "c++", "g++", "x86_64-linux-gnu-gcc", "clang")


@dataclass
class Dist:
    sdist: Path
    wheel: Path
    log: str


@dataclass
class Venv:
    root: Path
    env: dict[str, str] = field(default_factory=dict)

    @property
    def bin(self) -> Path:
        return self.root / "venv" / "bin"

    @property
    def work(self) -> Path:
        """The working directory of its commands: outside the checkout, so that nothing
        is imported from the source tree."""
        return self.root / "work"

    def run(
        self, *args: str | Path, timeout: float = 120, **kwargs: Any
    ) -> subprocess.CompletedProcess[str]:
        env = {**self.env, **kwargs.pop("env", {})}
        return subprocess.run(
            [str(a) for a in args],
            cwd=self.work,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            **kwargs,
        )


@pytest.fixture(scope="session")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Dist:
    out = tmp_path_factory.mktemp("dist")
    result = subprocess.run(
        [str(REPO / "scripts" / "build-dist")],
        env={**os.environ, "OUT": str(out), "TOOLS_PYTHON": sys.executable, "PYTHONS": PYTHON},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (sdist,) = out.glob("wsgiwatch-*.tar.gz")
    (wheel,) = out.glob("wsgiwatch-*.whl")
    return Dist(sdist, wheel, result.stdout + result.stderr)


def _hidden_compilers(directory: Path) -> None:
    directory.mkdir()
    for name in COMPILERS:
        shim = directory / name
        shim.write_text("#!/bin/sh\necho 'the test hides the C compiler' >&2\nexit 1\n")
        shim.chmod(0o755)


@pytest.fixture(scope="session")
def venv(dist: Dist) -> Iterator[Venv]:
    root = Path(tempfile.mkdtemp(prefix="wsgiwatch-wheel-"))
    root.chmod(0o755)
    try:
        _hidden_compilers(root / "no-compiler")
        (root / "work").mkdir()
        (root / "work").chmod(0o777)
        subprocess.run([PYTHON, "-m", "venv", str(root / "venv")], check=True)
        env = {
            key: value
            for key, value in os.environ.items()
            if key not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
            and not key.startswith("WSGIWATCH_")
        }
        env["PATH"] = os.pathsep.join(
            [str(root / "venv" / "bin"), str(root / "no-compiler"), env.get("PATH", "")]
        )
        env["CC"] = env["CXX"] = "false"
        v = Venv(root, env)
        install = v.run(
            v.bin / "python", "-m", "pip", "install", f"{dist.wheel}[demo]", timeout=300
        )
        assert install.returncode == 0, install.stdout + install.stderr
        yield v
    finally:
        shutil.rmtree(root, ignore_errors=True)
