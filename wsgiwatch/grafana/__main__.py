"""``python -m wsgiwatch.grafana [--check] [--out DIR] [--job NAME] ...``: generate the files.

Without ``--out`` (in a checkout of the repository) it writes ``grafana/`` and the package's
copy, ``wsgiwatch/grafana/data/`` (the same files with placeholders, which
``wsgiwatch grafana export`` fills in); with ``--out DIR``, only DIR. Without ``--check`` it
writes every generated file that changed. With ``--check`` it writes nothing and exits 1 when
a file differs from what the code generates (CI runs it). Generating needs the ``grafana``
extra (PyYAML, the Grafana SDK); exporting the shipped files does not.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from wsgiwatch.grafana import definitions as d
from wsgiwatch.grafana import export

PROG = "python -m wsgiwatch.grafana"
#: The repository's copy, and the package's (what the wheel ships).
REPO_OUT = Path("grafana")
PACKAGE_DATA = Path(__file__).resolve().parent / export.DATA
# Modules that only the grafana extra installs.
_EXTRA_MODULES = {"yaml", "grafana_foundation_sdk"}


def _needs_extra(exc: ModuleNotFoundError) -> str:
    why = f"no module {exc.name}"
    if exc.name == "grafana_foundation_sdk" and sys.version_info < (3, 11):
        why += ": grafana-foundation-sdk needs Python >= 3.11"
    return (
        f"{PROG}: generating the files needs the grafana extra ({why}): "
        "pip install 'wsgiwatch[grafana]'; `wsgiwatch grafana export DIR` writes the shipped "
        "files without it"
    )


def _generator() -> Callable[[d.Settings], dict[str, str]]:
    from wsgiwatch.grafana import artifacts

    def generate(settings: d.Settings) -> dict[str, str]:
        return artifacts.generate(settings)

    return generate


def _unexpected(root: Path, files: dict[str, str]) -> list[str]:
    """Files under the package copy that are no longer generated (it must hold no others)."""
    present = (p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    return [f"{root / rel}: no longer generated" for rel in sorted(present) if rel not in files]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Generate wsgiwatch's Prometheus rules, Grafana alerts, provisioning "
        "files and dashboards.",
    )
    parser.add_argument(
        "--out",
        type=Path,
        help=f"output directory (default: {REPO_OUT}, and the package's copy under "
        "wsgiwatch/grafana/data)",
    )
    parser.add_argument(
        "--job",
        default=d.DEFAULT_JOB,
        help=f"the Prometheus job that scrapes the sidecars (default: {d.DEFAULT_JOB})",
    )
    parser.add_argument("--datasource-uid", default=d.DEFAULT_DATASOURCE_UID)
    parser.add_argument("--datasource-name", default=d.DEFAULT_DATASOURCE_NAME)
    parser.add_argument("--prometheus-url", default=d.DEFAULT_PROMETHEUS_URL)
    parser.add_argument(
        "--check", action="store_true", help="change nothing; exit 1 if a file is out of date"
    )
    args = parser.parse_args(argv)
    settings = d.Settings(
        job=args.job,
        datasource_uid=args.datasource_uid,
        datasource_name=args.datasource_name,
        prometheus_url=args.prometheus_url,
    )
    targets = [(args.out, settings)] if args.out else [(REPO_OUT, settings)]
    if args.out is None:
        targets.append((PACKAGE_DATA, export.PLACEHOLDERS))
    try:
        from wsgiwatch.grafana import artifacts

        generated = [(root, artifacts.generate(s)) for root, s in targets]
    except ModuleNotFoundError as exc:
        if exc.name not in _EXTRA_MODULES:
            raise
        print(_needs_extra(exc), file=sys.stderr)
        return 2
    if args.check:
        problems = []
        for root, files in generated:
            problems += artifacts.stale(root, files)
            if root == PACKAGE_DATA:
                problems += _unexpected(root, files)
        for problem in problems:
            print(problem, file=sys.stderr)
        if problems:
            print(f"{len(problems)} file(s) out of date: run `{PROG}`", file=sys.stderr)
            return 1
        for root, files in generated:
            print(f"{len(files)} generated files under {root} are up to date")
        return 0
    for root, files in generated:
        for path in artifacts.write(root, files):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
