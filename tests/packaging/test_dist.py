"""scripts/build-dist's sdist and wheel, and a fresh venv that has only the wheel.

The wheel must serve a user without a compiler: the C accelerator is in it and active, the
demo runs, and the monitoring files export. The sdist must carry what the checkout tests and
documents.
"""

from __future__ import annotations

import os
import re
import subprocess
import tarfile
import zipfile
from pathlib import Path

from conftest import REPO, Dist, Venv

import wsgiwatch
from wsgiwatch.grafana import __main__ as generate_main

GRAFANA = REPO / "grafana"


def tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): p.read_text() for p in root.rglob("*") if p.is_file()}


def test_build_dist_makes_a_manylinux_wheel_and_an_sdist_that_twine_passes(dist: Dist) -> None:
    version = wsgiwatch.__version__
    assert dist.sdist.name == f"wsgiwatch-{version}.tar.gz"
    # cp311-cp311-manylinux2014_x86_64...: auditwheel's tag, one CPython's ABI (not abi3).
    assert re.fullmatch(
        rf"wsgiwatch-{re.escape(version)}-(cp3\d+)-\1-(manylinux\w+\.)*manylinux_2_\d+_x86_64\.whl",
        dist.wheel.name,
    ), dist.wheel.name
    assert dist.log.count("PASSED") == 2 and "FAILED" not in dist.log, dist.log


def test_the_sdist_carries_the_c_source_the_docs_and_the_tests(dist: Dist) -> None:
    with tarfile.open(dist.sdist) as sdist:
        members = {m.name.partition("/")[2]: m for m in sdist.getmembers()}
    tracked = subprocess.run(
        ["git", "ls-files", "tests", "docs", "grafana", "examples", "benchmarks", "scripts"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert len(tracked) > 50
    # The fake /proc's fd links come as links (setup.py), but for those to an absolute path
    # such as /dev/null, which pip refuses in an sdist.
    links = {rel: os.readlink(REPO / rel) for rel in tracked if (REPO / rel).is_symlink()}
    assert links
    kept = {rel: target for rel, target in links.items() if not os.path.isabs(target)}
    for rel, target in kept.items():
        assert members[rel].issym() and members[rel].linkname == target
    expected = set(tracked) - set(links) | set(kept)
    expected |= {"wsgiwatch/worker/_speedups.c", "wsgiwatch/kernel/_diag.c", "setup.py"}
    expected |= {"wsgiwatch/spool/_batch.c"}
    expected |= {"LICENSE", "CHANGELOG.md"}
    assert expected - set(members) == set()
    assert not [n for n in members if n.endswith((".so", ".pyc")) or "__pycache__" in n]


def test_the_wheel_carries_the_compiled_accelerator_and_the_monitoring_files(dist: Dist) -> None:
    names = set(zipfile.ZipFile(dist.wheel).namelist())
    assert [n for n in names if re.fullmatch(r"wsgiwatch/worker/_speedups\.cpython-.*\.so", n)]
    assert [n for n in names if re.fullmatch(r"wsgiwatch/kernel/_diag\.cpython-.*\.so", n)]
    assert "wsgiwatch/worker/_speedups.pyi" in names and "wsgiwatch/py.typed" in names
    assert "wsgiwatch/kernel/_diag.pyi" in names
    assert "wsgiwatch/worker/_speedups.c" not in names
    assert "wsgiwatch/kernel/_diag.c" not in names
    assert [n for n in names if re.fullmatch(r"wsgiwatch/spool/_batch\.cpython-.*\.so", n)]
    assert "wsgiwatch/spool/_batch.pyi" in names and "wsgiwatch/spool/_batch.c" not in names
    data = {f"wsgiwatch/grafana/data/{rel}" for rel in tree(generate_main.PACKAGE_DATA)}
    assert data and data <= names
    assert not [n for n in names if n.startswith("tests/")]


def test_without_a_compiler_the_installed_wheel_records_on_the_c_path(venv: Venv) -> None:
    assert venv.run("gcc", "--version").returncode != 0  # hidden
    result = venv.run(
        venv.bin / "python",
        "-c",
        "from wsgiwatch.worker import accelerator; print(accelerator.speedups.__file__)",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(str(venv.root / "venv" / "lib")), result.stdout


def test_the_version_is_the_same_in_the_command_the_metadata_and_the_source(venv: Venv) -> None:
    command = venv.run(venv.bin / "wsgiwatch", "--version")
    metadata = venv.run(
        venv.bin / "python", "-c", "import importlib.metadata as m; print(m.version('wsgiwatch'))"
    )
    assert command.stdout == f"wsgiwatch {wsgiwatch.__version__}\n"
    assert metadata.stdout == f"{wsgiwatch.__version__}\n"


def test_the_installed_wheel_exports_the_committed_monitoring_files(venv: Venv) -> None:
    result = venv.run(venv.bin / "wsgiwatch", "grafana", "export", "monitoring")
    assert result.returncode == 0, result.stderr
    assert tree(venv.work / "monitoring") == tree(GRAFANA)


def test_generating_the_files_without_the_grafana_extra_says_so_in_one_line(venv: Venv) -> None:
    result = venv.run(venv.bin / "python", "-m", "wsgiwatch.grafana", "--out", "generated")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "needs the grafana extra (no module yaml)" in result.stderr
    assert "pip install 'wsgiwatch[grafana]'" in result.stderr
    assert not (venv.work / "generated").exists()


def test_the_demo_runs_from_the_wheel_and_records_on_the_c_path(venv: Venv) -> None:
    """The demo's diagnosis names workers that record in pure Python: none here, and both
    of them when the C path is turned off (the contrast shows the check can fail)."""
    args = (venv.bin / "wsgiwatch", "demo", "--seconds", "3", "--timeline", "demo.html")
    c_path = venv.run(*args)
    assert c_path.returncode == 0, c_path.stdout + c_path.stderr
    assert "inside busy worker processes" in c_path.stdout
    assert "in pure Python" not in c_path.stdout
    assert (venv.work / "demo.html").stat().st_size > 0
    python_path = venv.run(*args, env={"WSGIWATCH_PURE_PYTHON": "1"})
    assert python_path.returncode == 0, python_path.stdout + python_path.stderr
    assert "2 workers record in pure Python" in python_path.stdout
