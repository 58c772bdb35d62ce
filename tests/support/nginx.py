"""Debian's nginx in front of a real app server, the way it is deployed: for the e2e tests.

nginx runs from its own config in a temp dir (``-p`` prefix, ``daemon off``, its own pid and
error log, workers as www-data as Debian's package runs them), listening on 127.0.0.1 on a
free port; it proxies to gunicorn on a unix socket or over TCP, or to uWSGI over the uwsgi
protocol. Every process here is started by the test and stopped by its pid's group.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from support.servers import TESTS_DIR, free_port, gunicorn_argv, uwsgi_argv, wait_for_port
from wsgiwatch.cli.process_group import stop_group

NGINX = shutil.which("nginx", path="/usr/sbin:/usr/bin") or "/usr/sbin/nginx"
#: The snippets a user includes (README, examples/nginx/): the tests include the very files.
#: They make nginx send ``X-Request-Start: t=<epoch seconds>.<milliseconds>``.
EXAMPLES = os.path.join(os.path.dirname(TESTS_DIR), "examples", "nginx")
PROXY_SNIPPET = os.path.join(EXAMPLES, "wsgiwatch-proxy.conf")
UWSGI_SNIPPET = os.path.join(EXAMPLES, "wsgiwatch-uwsgi.conf")

_CONFIG = """\
user {user};
worker_processes 1;
daemon off;
master_process on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    upstream app {{
        server {upstream};
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
{location}
        }}
    }}
}}
"""


@dataclass
class Upstream:
    """An app server behind nginx: its process and where it listens."""

    proc: subprocess.Popen[bytes]
    address: str  # "unix:/path" or "127.0.0.1:port", as nginx's ``server`` wants it
    spool_dir: str


@dataclass
class Nginx:
    proc: subprocess.Popen[bytes]
    port: int
    prefix: str

    def error_log(self) -> str:
        with open(os.path.join(self.prefix, "error.log"), encoding="utf-8", errors="replace") as f:
            return f.read()


def location_block(protocol: Literal["http", "uwsgi"], request_start: bool) -> str:
    """The ``location /`` body a user writes (as examples/nginx/site.conf)."""
    if protocol == "uwsgi":
        lines = ["include /etc/nginx/uwsgi_params;", "uwsgi_pass app;"]
        if request_start:
            lines.append(f"include {UWSGI_SNIPPET};")
    else:
        lines = ["proxy_set_header Host $host;", "proxy_pass http://app;"]
        if request_start:
            lines.append(f"include {PROXY_SNIPPET};")
    return "\n".join(" " * 12 + line for line in lines)


@contextlib.contextmanager
def nginx(
    upstream: str,
    *,
    request_start: bool = False,
    protocol: Literal["http", "uwsgi"] = "http",
    user: str = "www-data",
) -> Iterator[Nginx]:
    """nginx on a free port proxying to ``upstream`` ("unix:/path" or "host:port")."""
    prefix = tempfile.mkdtemp(prefix="wsgiwatch-nginx-")
    os.chmod(prefix, 0o755)
    port = free_port()
    config = _CONFIG.format(
        user=user,
        prefix=prefix,
        port=port,
        upstream=upstream,
        location=location_block(protocol, request_start),
    )
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w", encoding="utf-8") as f:
        f.write(config)
    proc = subprocess.Popen(
        [NGINX, "-p", prefix, "-c", conf, "-e", os.path.join(prefix, "error.log")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_port(port, proc)
        yield Nginx(proc, port, prefix)
    finally:
        stop_group(proc)
        if proc.stdout:
            proc.stdout.close()
        shutil.rmtree(prefix, ignore_errors=True)


def wait_for_unix(path: str, proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """Wait until something accepts on the unix socket ``path`` (or the server died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise RuntimeError(f"server exited with {proc.returncode}:\n{out}")
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as s:
            s.settimeout(0.2)
            s.connect(path)
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on {path} after {timeout} s")


@contextlib.contextmanager
def _upstream(
    argv: Sequence[str], spool_dir: str, env: dict[str, str] | None, address: str
) -> Iterator[Upstream]:
    """Run an app server (its own process group) until the block ends; ``address`` is where
    it listens, as nginx's ``server`` says it: ``unix:/path`` or ``127.0.0.1:port``."""
    full_env = dict(os.environ, WSGIWATCH_DIR=spool_dir, PYTHONPATH=TESTS_DIR)
    full_env.update(env or {})
    proc = subprocess.Popen(
        argv, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        if address.startswith("unix:"):
            wait_for_unix(address[5:], proc)
        else:
            wait_for_port(int(address.rsplit(":", 1)[1]), proc)
        yield Upstream(proc, address, spool_dir)
    finally:
        stop_group(proc)
        if proc.stdout:
            proc.stdout.close()


@contextlib.contextmanager
def _socket_dir() -> Iterator[str]:
    """A temp dir for a unix socket, 0755 so that nginx's www-data workers reach it."""
    path = tempfile.mkdtemp(prefix="wsgiwatch-sock-")
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def gunicorn_behind(
    app: str,
    spool_dir: str,
    *,
    unix: bool = True,
    worker_class: str = "gthread",
    workers: int = 2,
    threads: int = 1,
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> Iterator[Upstream]:
    """gunicorn serving ``app`` on a unix socket (gunicorn's socket is 0777 with its default
    umask 0) or on a free TCP port of 127.0.0.1."""
    with _socket_dir() as sock_dir:
        address = f"unix:{sock_dir}/gunicorn.sock" if unix else f"127.0.0.1:{free_port()}"
        argv = gunicorn_argv(app, address, worker_class, workers, threads, extra)
        with _upstream(argv, spool_dir, env, address) as upstream:
            yield upstream


@contextlib.contextmanager
def uwsgi_behind(
    module: str, spool_dir: str, *, processes: int = 1, env: dict[str, str] | None = None
) -> Iterator[Upstream]:
    """uWSGI (PyPI's build) speaking the uwsgi protocol on a unix socket, for nginx's
    ``uwsgi_pass``: forked workers, one thread each, each accepting only when free."""
    with _socket_dir() as sock_dir:
        path = os.path.join(sock_dir, "uwsgi.sock")
        # nginx's workers run as www-data: the socket is theirs to connect to.
        argv = uwsgi_argv(["--socket", path, "--chmod-socket=666"], module, processes, 1)
        with _upstream(argv, spool_dir, env, f"unix:{path}") as upstream:
            yield upstream
