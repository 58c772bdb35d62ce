"""Starting real WSGI servers for tests: on 127.0.0.1, a free port, stopped by pid."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO

from wsgiwatch.cli.process_group import stop_group

VENV_BIN = os.path.dirname(sys.executable)
TESTS_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(
    port: int,
    proc: subprocess.Popen[bytes],
    timeout: float = 20.0,
    output: IO[bytes] | None = None,
) -> None:
    """Wait until something accepts on 127.0.0.1:port (or the server died)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            out = _read_back(output) if output else ""
            if not out and proc.stdout:
                out = proc.stdout.read().decode(errors="replace")
            raise RuntimeError(f"server exited with {proc.returncode}:\n{out}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout} s")


def _read_back(output: IO[bytes]) -> str:
    output.flush()
    output.seek(0)
    return output.read().decode(errors="replace")


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    port: int
    spool_dir: str
    #: What the server printed, in a file: a pipe nobody reads would stop a server that
    #: logs much (the sidecar logs one line per incident) once ~64 KB piled up.
    output: IO[bytes] | None = None

    def printed(self) -> str:
        return _read_back(self.output) if self.output else ""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


@contextlib.contextmanager
def run_server(
    argv: Sequence[str], port: int, spool_dir: str, env: dict[str, str] | None = None
) -> Iterator[Server]:
    """Run a server command (its own process group) until the block ends."""
    full_env = dict(os.environ, WSGIWATCH_DIR=spool_dir, PYTHONPATH=TESTS_DIR)
    full_env.update(env or {})
    with tempfile.TemporaryFile() as output:
        proc = subprocess.Popen(
            list(argv),
            env=full_env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_for_port(port, proc, output=output)
            yield Server(proc, port, spool_dir, output)
        finally:
            stop_group(proc)


def gunicorn(
    app: str,
    spool_dir: str,
    *,
    worker_class: str = "sync",
    workers: int = 1,
    threads: int = 1,
    extra: Sequence[str] = (),
    env: dict[str, str] | None = None,
) -> contextlib.AbstractContextManager[Server]:
    """gunicorn serving ``app`` (``module:callable`` importable from tests/)."""
    port = free_port()
    argv = gunicorn_argv(app, f"127.0.0.1:{port}", worker_class, workers, threads, extra)
    return run_server(argv, port, spool_dir, env)


def gunicorn_argv(
    app: str, bind: str, worker_class: str, workers: int, threads: int, extra: Sequence[str]
) -> list[str]:
    """The gunicorn command line the tests use, bound to ``bind`` (host:port, unix:path)."""
    return [
        os.path.join(VENV_BIN, "gunicorn"),
        "--bind",
        bind,
        "--workers",
        str(workers),
        "--threads",
        str(threads),
        "--worker-class",
        worker_class,
        "--graceful-timeout",
        "2",
        "--log-level",
        "warning",
        *extra,
        app,
    ]


def waitress(
    app: str,
    spool_dir: str,
    *,
    threads: int = 1,
    hook: bool = False,
    env: dict[str, str] | None = None,
) -> contextlib.AbstractContextManager[Server]:
    """waitress serving ``app`` in one process (optionally with the accept hook)."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "support.waitress_runner",
        "--port",
        str(port),
        "--threads",
        str(threads),
        *(["--hook"] if hook else []),
        app,
    ]
    return run_server(argv, port, spool_dir, env)


def cheroot(
    app: str, spool_dir: str, *, threads: int = 1, env: dict[str, str] | None = None
) -> contextlib.AbstractContextManager[Server]:
    """cheroot (CherryPy's server) serving ``app`` with ``threads`` worker threads."""
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "support.cheroot_runner",
        "--port",
        str(port),
        "--threads",
        str(threads),
    ]
    return run_server([*argv, app], port, spool_dir, env)


def uwsgi_argv(listen: Sequence[str], module: str, processes: int, threads: int) -> list[str]:
    """uWSGI's command line for the tests: ``listen`` (``--http-socket ADDR``, ``--socket
    PATH``...), a master and forked workers loading ``module`` from tests/ in our venv."""
    return [
        os.path.join(VENV_BIN, "uwsgi"),
        *listen,
        "--master",
        "--processes",
        str(processes),
        "--threads",
        str(threads),
        "--virtualenv",
        os.path.dirname(VENV_BIN),
        "--pythonpath",
        TESTS_DIR,
        "--module",
        module,
        "--need-app",
        "--die-on-term",  # SIGTERM stops it (uWSGI 2.0 would reload)
        "--disable-logging",
    ]


def uwsgi(
    module: str,
    spool_dir: str,
    *,
    processes: int = 1,
    threads: int = 1,
    env: dict[str, str] | None = None,
    under: Sequence[str] = (),
) -> contextlib.AbstractContextManager[Server]:
    """uWSGI (PyPI's build) serving ``module`` (``pkg.mod:callable``) with its own HTTP
    parser in each worker (``--http-socket``). The app is loaded in the master and the
    workers forked from it, uWSGI's default (like gunicorn ``--preload``). ``under``: a
    command to run it under (strace)."""
    port = free_port()
    argv = [
        *under,
        *uwsgi_argv(["--http-socket", f"127.0.0.1:{port}"], module, processes, threads),
        "--hook-master-start",  # a worker accepts only when free, like gunicorn sync
        "unix_signal:15 gracefully_kill_them_all",
    ]
    return run_server(argv, port, spool_dir, env)


def sidecar(spool_dir: str, *extra: str) -> tuple[contextlib.AbstractContextManager[Server], int]:
    """The real ``wsgiwatch sidecar`` on a free port, polling every 0.25 s: (context, port)."""
    port = free_port()
    argv = [
        os.path.join(VENV_BIN, "wsgiwatch"),
        "sidecar",
        "--dir",
        spool_dir,
        "--listen",
        f"127.0.0.1:{port}",
        "--poll-interval",
        "0.25",
        *extra,
    ]
    return run_server(argv, port, spool_dir), port
