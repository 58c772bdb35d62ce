"""examples/nginx and examples/apache: the configurations a user copies are accepted by
Debian's nginx and Apache as they stand (only the paths of this checkout swapped in). The
nginx snippets themselves are what tests/e2e/test_nginx.py runs behind."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from support.apache import APACHE, MODULES, SITE_PACKAGES
from support.nginx import NGINX

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"


def test_the_nginx_site_is_valid(tmp_path: Path) -> None:
    site = (EXAMPLES / "nginx" / "site.conf").read_text()
    site = site.replace(
        "/etc/nginx/wsgiwatch-proxy.conf", str(EXAMPLES / "nginx" / "wsgiwatch-proxy.conf")
    )
    # uWSGI behind uwsgi_pass: its snippet, where a user puts it.
    uwsgi = EXAMPLES / "nginx" / "wsgiwatch-uwsgi.conf"
    site = site.replace(
        "    location / {",
        "    location /u {\n        include /etc/nginx/uwsgi_params;\n"
        f"        uwsgi_pass app;\n        include {uwsgi};\n    }}\n\n    location / {{",
    )
    (tmp_path / "site.conf").write_text(site)
    conf = tmp_path / "nginx.conf"
    conf.write_text(
        f"pid {tmp_path}/nginx.pid;\nerror_log {tmp_path}/error.log;\n"
        f"events {{}}\nhttp {{\n    include {tmp_path}/site.conf;\n}}\n"
    )
    out = subprocess.run(
        [NGINX, "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0 and "syntax is ok" in out.stderr, out.stderr


def test_the_apache_site_is_valid(tmp_path: Path) -> None:
    site = (EXAMPLES / "apache" / "wsgiwatch.conf").read_text()
    app_dir = REPO / "tests" / "apps"
    site = site.replace("/srv/myapp/wsgi.py", str(app_dir / "stamped.py"))
    site = site.replace("python-path=/srv/myapp", f"python-path={REPO}:{SITE_PACKAGES}")
    site = site.replace("/srv/myapp", str(app_dir))
    site = site.replace("/var/cache/apache2/cores", str(tmp_path))
    (tmp_path / "site.conf").write_text(site)
    conf = tmp_path / "httpd.conf"
    modules = ("mpm_event", "authz_core", "env", "wsgi")
    conf.write_text(
        f'ServerRoot "{tmp_path}"\nServerName 127.0.0.1\nPidFile {tmp_path}/httpd.pid\n'
        f"ErrorLog {tmp_path}/error.log\nDefaultRuntimeDir {tmp_path}\n"
        + "".join(f"LoadModule {m}_module {MODULES}/mod_{m}.so\n" for m in modules)
        + f"Include {tmp_path}/site.conf\n"
    )
    out = subprocess.run(
        [APACHE, "-t", "-d", str(tmp_path), "-f", str(conf)],
        capture_output=True,
        text=True,
        timeout=30,
        env={"PATH": os.environ["PATH"], "LANG": "C"},
    )
    assert out.returncode == 0 and "Syntax OK" in out.stderr, out.stderr


def test_the_sidecar_unit_runs_as_the_daemons_user() -> None:
    unit = (EXAMPLES / "apache" / "wsgiwatch-sidecar.service").read_text().splitlines()
    assert "User=www-data" in unit and "Group=www-data" in unit
    site = (EXAMPLES / "apache" / "wsgiwatch.conf").read_text()
    (directory,) = [
        line.split()[-1] for line in site.splitlines() if "SetEnv WSGIWATCH_DIR" in line
    ]
    assert f"Environment=WSGIWATCH_DIR={directory}" in unit
    assert f"RuntimeDirectory={directory.rsplit('/', 1)[-1]}" in unit
