"""``wsgiwatch run [sidecar options] -- SERVER COMMAND...``: a server and its sidecar as one
process, for a Procfile line (the way ``ddtrace-run`` or ``newrelic-admin run-program`` wrap
a server).

- The spool directory is ``--dir`` or ``$WSGIWATCH_DIR`` when given (created 0700 if
  missing); otherwise a fresh private one, ``run-<pid>-<random>`` inside the default spool
  directory, removed when ``run`` exits. A fresh one keeps two ``run`` commands on the same
  host from reporting each other's workers; directories left by a ``run`` that was killed
  are removed by the next one to start.
- The sidecar runs in this process (threads), and serves before the server starts.
- The server is a child process with ``WSGIWATCH_DIR`` in its environment, in our process
  group. The signals gunicorn reacts to (TERM, INT, HUP, QUIT, USR1, USR2, TTIN, TTOU) are
  passed on to it; a terminal's Ctrl-C reaches both of us, so the server may see SIGINT twice.
- ``run`` exits with the server's status (128 + N when signal N killed it), after stopping
  the sidecar. A sidecar that cannot start (port taken, directory refused) is logged and
  the server runs anyway: monitoring must not take the application down.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from types import FrameType
from typing import Any

import structlog

from wsgiwatch.cli.sidecar import (
    ConfigError,
    SidecarSettings,
    add_sidecar_options,
    build_monitor,
    close_monitor,
    load_factory,
    settings_from,
)
from wsgiwatch.kernel.procfs import pid_exists
from wsgiwatch.sidecar.contract import MonitorProtocol
from wsgiwatch.sidecar.server import SidecarServer
from wsgiwatch.spool.writer import default_spool_dir, ensure_private_dir

log = structlog.get_logger("wsgiwatch.cli.run")

FORWARDED_SIGNALS: tuple[signal.Signals, ...] = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGTTIN,
    signal.SIGTTOU,
)
RUN_DIR_PREFIX = "run-"
_RUN_DIR = re.compile(rf"{RUN_DIR_PREFIX}(\d+)-\w+")
#: Exit statuses of a command that could not be started, as shells use them.
STATUS_NOT_FOUND = 127
STATUS_NOT_EXECUTABLE = 126


def exit_status(returncode: int) -> int:
    """A child's exit status as a shell reports it: 128 + N for death by signal N."""
    return returncode if returncode >= 0 else 128 - returncode


def remove_abandoned_run_dirs(base: str) -> int:
    """Remove ``run-<pid>-*`` directories in ``base`` whose ``run`` process is gone."""
    removed = 0
    try:
        names = os.listdir(base)
    except OSError:
        return 0
    for name in names:
        match = _RUN_DIR.fullmatch(name)
        if match is None:
            continue
        pid = int(match.group(1))
        # A recycled pid keeps a directory until that process is gone too: harmless.
        if pid == os.getpid() or pid_exists(pid):
            continue
        shutil.rmtree(os.path.join(base, name), ignore_errors=True)
        removed += 1
    return removed


def make_run_dir(base: str | None = None) -> str:
    """A fresh private (0700) spool directory for one ``run``, inside ``base``."""
    base = base or default_spool_dir()
    ensure_private_dir(base)
    remove_abandoned_run_dirs(base)
    return tempfile.mkdtemp(prefix=f"{RUN_DIR_PREFIX}{os.getpid()}-", dir=base)


class _SignalForwarder:
    """Passes signals on to the child; remembers those that arrive before it exists."""

    def __init__(self, signals: Sequence[int]) -> None:
        self.signals = signals
        self.child: subprocess.Popen[bytes] | None = None
        self.pending: list[int] = []
        self.forwarded: list[int] = []
        self._previous: dict[int, Any] = {}

    def install(self) -> None:
        for signum in self.signals:
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def attach(self, child: subprocess.Popen[bytes]) -> None:
        self.child = child
        while self.pending:
            self._on_signal(self.pending.pop(0), None)

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        # No logging here (see wsgiwatch.sidecar.server.serve); run.exited lists them.
        if self.child is None:
            self.pending.append(signum)
            return
        self.forwarded.append(signum)
        self.child.send_signal(signum)  # a no-op once the child has been reaped


def run_program(
    command: Sequence[str],
    settings: SidecarSettings | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """Run ``command`` with a sidecar; returns the exit status to exit with.

    Must be called from the main thread (it installs signal handlers, restored afterwards).
    """
    settings = settings or SidecarSettings()
    if not command:
        raise ConfigError("no server command given: wsgiwatch run [options] -- COMMAND...")
    load_factory(settings.monitor_factory)  # a typo here is a usage error, found up front
    child_env = dict(os.environ if environ is None else environ)
    forwarder = _SignalForwarder(FORWARDED_SIGNALS)
    forwarder.install()
    owned_dir: str | None = None
    sidecar: SidecarServer | None = None
    monitor: MonitorProtocol | None = None
    try:
        try:
            if settings.spool_dir is None:
                spool_dir = owned_dir = make_run_dir()
            else:
                spool_dir = settings.spool_dir
                child_env["WSGIWATCH_DIR"] = spool_dir  # even if refused below
                ensure_private_dir(spool_dir)
            child_env["WSGIWATCH_DIR"] = spool_dir
            monitor = build_monitor(settings, spool_dir)
            sidecar = SidecarServer(
                monitor,
                host=settings.host,
                port=settings.port,
                poll_interval_s=settings.poll_interval_s,
            )
            sidecar.start()
        except Exception as exc:
            log.error("run.sidecar_failed", error=f"{type(exc).__name__}: {exc}")
            if sidecar is not None:
                sidecar.stop()
                sidecar = None

        try:
            child = subprocess.Popen(list(command), env=child_env)
        except OSError as exc:
            missing = isinstance(exc, FileNotFoundError)
            status = STATUS_NOT_FOUND if missing else STATUS_NOT_EXECUTABLE
            log.error("run.command_failed", command=list(command), error=str(exc), status=status)
            return status
        forwarder.attach(child)
        log.info(
            "run.started",
            pid=child.pid,
            command=list(command),
            spool_dir=child_env.get("WSGIWATCH_DIR"),
            sidecar=sidecar.url if sidecar is not None else None,
        )
        returncode = child.wait()
        status = exit_status(returncode)
        log.info(
            "run.exited",
            status=status,
            signal=signal.Signals(-returncode).name if returncode < 0 else None,
            forwarded=[signal.Signals(s).name for s in forwarder.forwarded],
        )
        return status
    finally:
        # Handlers stay until the end: a late SIGTERM must not replace the server's status.
        if sidecar is not None:
            sidecar.stop()
        if monitor is not None:
            close_monitor(monitor)
        if owned_dir is not None:
            shutil.rmtree(owned_dir, ignore_errors=True)
        forwarder.restore()


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "run",
        help="run a server command with a sidecar (for a Procfile)",
        usage="wsgiwatch run [-h] [sidecar options] -- SERVER COMMAND...",
        description="Start the sidecar, then the server command with WSGIWATCH_DIR set to "
        "a shared private spool directory; pass signals on to the server; exit with its "
        "status (128+N if signal N killed it). Without --dir or WSGIWATCH_DIR, a fresh "
        "directory is made and removed afterwards.",
    )
    add_sidecar_options(parser)
    parser.add_argument("command", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    from wsgiwatch.logs import configure_logging

    argv = list(args.command)
    if argv[:1] == ["--"]:  # argparse keeps it (newer Pythons drop it)
        argv = argv[1:]
    if not argv:
        raise ConfigError("no server command given: wsgiwatch run [options] -- COMMAND...")
    settings = settings_from(args, environ)
    load_factory(settings.monitor_factory)
    configure_logging(settings.log_format)
    return run_program(argv, settings, environ)
