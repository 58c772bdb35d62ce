"""Debian's Apache with mod_wsgi in daemon mode, the way it is deployed: for the e2e tests.

Apache runs from its own config and ServerRoot in a temp dir (``-DFOREGROUND``, its own pid
file, error log and runtime dir), listening on 127.0.0.1 on a free port; its children and the
mod_wsgi daemons run as www-data (``User``/``Group``), as Debian's package runs them. The
daemons embed Debian's ``/usr/bin/python3`` (libapache2-mod-wsgi-py3), so wsgiwatch comes from
this checkout and its dependencies from the test virtualenv's site-packages, through
``python-path`` (both readable by all; the virtualenv's own Python, under /root, is not).

The sidecar for it runs as www-data too (``setpriv``), on Debian's Python with the test
virtualenv's site-packages on its path, as a user would run it next to Apache.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from support.servers import TESTS_DIR, free_port, wait_for_port
from wsgiwatch.cli.process_group import stop_group

APACHE = "/usr/sbin/apache2"
MODULES = "/usr/lib/apache2/modules"
DAEMON_USER = "www-data"
REPO_DIR = os.path.dirname(TESTS_DIR)
#: Debian's Python (the one mod_wsgi embeds) and, for the sidecar, the test virtualenv's
#: packages (prometheus_client, structlog, werkzeug, psutil).
SYSTEM_PYTHON = "/usr/bin/python3"
SITE_PACKAGES = next(p for p in sys.path if p.endswith("site-packages") and "venv" in p)

_CONFIG = """\
ServerRoot "{root}"
ServerName 127.0.0.1
Listen 127.0.0.1:{port}
PidFile {root}/httpd.pid
ErrorLog {root}/error.log
LogLevel warn
DefaultRuntimeDir {root}/run
Mutex file:{root}/run default
User {user}
Group {user}
LoadModule mpm_event_module {modules}/mod_mpm_event.so
LoadModule authz_core_module {modules}/mod_authz_core.so
LoadModule env_module {modules}/mod_env.so
LoadModule wsgi_module {modules}/mod_wsgi.so
StartServers 1
ServerLimit 2
ThreadsPerChild 16
MaxRequestWorkers 32
WSGISocketPrefix {root}/run/wsgi
WSGIRestrictEmbedded On
WSGIDaemonProcess app processes={processes} threads={threads} display-name=wsgiwatch-app \
    python-path={python_path}{daemon_options}
WSGIProcessGroup app
WSGIApplicationGroup {application_group}
WSGIScriptAlias / {script}
{set_env}
<Directory {script_dir}>
    Require all granted
</Directory>
"""


@dataclass
class Apache:
    proc: subprocess.Popen[bytes]
    port: int
    root: str
    spool_dir: str

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def error_log(self) -> str:
        with open(os.path.join(self.root, "error.log"), encoding="utf-8", errors="replace") as f:
            return f.read()


def daemon_owned_dir(prefix: str) -> str:
    """A fresh 0700 directory owned by the daemon user (a spool directory for Apache)."""
    path = tempfile.mkdtemp(prefix=prefix)
    user = pwd.getpwnam(DAEMON_USER)
    os.chown(path, user.pw_uid, user.pw_gid)
    return path


@contextlib.contextmanager
def apache(
    spool_dir: str,
    *,
    processes: int = 1,
    threads: int = 1,
    script: str = os.path.join(TESTS_DIR, "apps", "stamped.py"),
    set_env: bool = True,
    envvars: bool = False,
    dumpable: bool = False,
    application_group: str = "%{GLOBAL}",
    daemon_options: Sequence[str] = (),
) -> Iterator[Apache]:
    """Apache + mod_wsgi daemon mode serving ``script`` on a free port; ``WSGIWATCH_DIR``
    given by ``SetEnv`` (it arrives in the WSGI environ) unless ``set_env`` is False, and in
    Apache's own environment (Debian's /etc/apache2/envvars way, inherited by the daemons'
    ``os.environ``) when ``envvars``. ``dumpable``: with ``CoreDumpDirectory``, as
    examples/apache/wsgiwatch.conf advises (Apache and mod_wsgi then mark their processes
    dumpable, so a sidecar of the same user can read their sockets)."""
    root = tempfile.mkdtemp(prefix="wsgiwatch-apache-")
    os.chmod(root, 0o755)
    os.mkdir(os.path.join(root, "run"), 0o755)
    port = free_port()
    options = "".join(f" {o}" for o in daemon_options)
    config = _CONFIG.format(
        root=root,
        port=port,
        user=DAEMON_USER,
        modules=MODULES,
        processes=processes,
        threads=threads,
        python_path=f"{REPO_DIR}:{TESTS_DIR}:{SITE_PACKAGES}",
        daemon_options=options,
        script=script,
        script_dir=os.path.dirname(script),
        set_env=f"SetEnv WSGIWATCH_DIR {spool_dir}" if set_env else "",
        application_group=application_group,
    )
    if dumpable:
        os.mkdir(os.path.join(root, "cores"), 0o700)
        user = pwd.getpwnam(DAEMON_USER)
        os.chown(os.path.join(root, "cores"), user.pw_uid, user.pw_gid)
        config += f"CoreDumpDirectory {root}/cores\n"
    conf = os.path.join(root, "httpd.conf")
    with open(conf, "w", encoding="utf-8") as f:
        f.write(config)
    proc = subprocess.Popen(
        [APACHE, "-d", root, "-f", conf, "-DFOREGROUND"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={
            "PATH": "/usr/sbin:/usr/bin:/bin",
            "LANG": "C",
            **({"WSGIWATCH_DIR": spool_dir} if envvars else {}),
        },
    )
    try:
        wait_for_port(port, proc)
        yield Apache(proc, port, root, spool_dir)
    finally:
        stop_group(proc)
        if proc.stdout:
            proc.stdout.close()
        shutil.rmtree(root, ignore_errors=True)


def as_daemon_user(argv: Sequence[str]) -> list[str]:
    """``argv`` run as the daemon user, with no supplementary groups (as a unit with
    ``User=www-data`` would run it), on Debian's Python with our packages on its path."""
    return [
        "setpriv",
        "--reuid",
        DAEMON_USER,
        "--regid",
        DAEMON_USER,
        "--clear-groups",
        "env",
        f"PYTHONPATH={REPO_DIR}:{SITE_PACKAGES}",
        "HOME=/tmp",
        *argv,
    ]


def sidecar_argv(spool_dir: str, port: int, *extra: str) -> list[str]:
    """``wsgiwatch sidecar`` as the daemon user, polling every 0.25 s."""
    return as_daemon_user(
        [
            SYSTEM_PYTHON,
            "-m",
            "wsgiwatch.cli",
            "sidecar",
            "--dir",
            spool_dir,
            "--listen",
            f"127.0.0.1:{port}",
            "--poll-interval",
            "0.25",
            "--log-format",
            "json",
            *extra,
        ]
    )


@contextlib.contextmanager
def daemon_sidecar(spool_dir: str, *extra: str) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    """The real sidecar as www-data on a free port: (process, port)."""
    port = free_port()
    proc = subprocess.Popen(
        sidecar_argv(spool_dir, port, *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd="/tmp",
    )
    try:
        wait_for_port(port, proc)
        yield proc, port
    finally:
        stop_group(proc)
        if proc.stdout:
            proc.stdout.close()
