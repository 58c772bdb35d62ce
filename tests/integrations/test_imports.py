"""The package works without Flask or Django installed: only the module for a framework
imports that framework."""

from __future__ import annotations

import subprocess
import sys
import textwrap


def test_package_imports_without_flask_or_django() -> None:
    code = textwrap.dedent(
        """
        import sys
        sys.modules["flask"] = None  # import flask now raises ImportError, as if absent
        sys.modules["django"] = None
        import wsgiwatch, wsgiwatch.cli, wsgiwatch.integrations
        import wsgiwatch.integrations.django  # needs nothing from Django
        try:
            import wsgiwatch.integrations.flask
        except ImportError:
            pass
        else:
            raise SystemExit("flask integration imported without flask")
        print("ok")
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert (done.returncode, done.stdout.strip()) == (0, "ok"), done.stderr


def test_importing_the_package_loads_no_framework() -> None:
    code = (
        "import sys, wsgiwatch, wsgiwatch.integrations, wsgiwatch.integrations.django; "
        "print(sorted(m for m in ('flask', 'django') if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, check=False
    )
    assert (done.returncode, done.stdout.strip()) == (0, "[]"), done.stderr
