"""``wsgiwatch sidecar``: its options (shared with ``wsgiwatch run``) and the command itself.

Every option can also come from an environment variable ``WSGIWATCH_<OPTION>`` (``--poll-
interval`` from ``WSGIWATCH_POLL_INTERVAL``); a flag on the command line wins. This is the
only place wsgiwatch reads those variables for the sidecar: the library takes keyword
arguments.
"""

from __future__ import annotations

import argparse
import importlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar, cast

from wsgiwatch.errors import WsgiwatchError
from wsgiwatch.logs import LOG_FORMATS, LogFormat
from wsgiwatch.sidecar.contract import MonitorProtocol

ENV_PREFIX = "WSGIWATCH_"
DEFAULT_LISTEN = "127.0.0.1:9808"
DEFAULT_POLL_INTERVAL_S = 0.5
DEFAULT_THRESHOLD_S = 0.05
DEFAULT_MONITOR_FACTORY = "wsgiwatch.sidecar.monitor:Monitor"

T = TypeVar("T")


class ConfigError(WsgiwatchError, ValueError):
    """A command-line option or environment variable has a value we cannot use."""


@dataclass(frozen=True)
class SidecarSettings:
    #: None when neither --dir nor WSGIWATCH_DIR was given (each command picks its default).
    spool_dir: str | None = None
    host: str = "127.0.0.1"
    port: int = 9808
    poll_interval_s: float = DEFAULT_POLL_INTERVAL_S
    threshold_s: float = DEFAULT_THRESHOLD_S
    listener_ports: tuple[int, ...] | None = None
    log_format: LogFormat = "json"
    monitor_factory: str = DEFAULT_MONITOR_FACTORY
    #: Client addresses in /api/requests, /api/incidents and /api/state ("hide": "hidden").
    peer_addresses: bool = True


def parse_listen(value: str) -> tuple[str, int]:
    """``HOST:PORT``, ``[IPV6]:PORT`` or a bare ``PORT`` (on 127.0.0.1) -> (host, port).

    An empty host (``:9808``) is refused rather than read as "all interfaces": exposing the
    sidecar beyond the machine takes an explicit ``0.0.0.0`` or ``[::]``.
    """
    value = value.strip()
    if value.isdigit():
        host, port_text = "127.0.0.1", value
    elif value.startswith("["):
        host, sep, port_text = value[1:].partition("]:")
        if not sep or not host:
            raise ValueError("an IPv6 address goes in brackets with a port: [::1]:9808")
    else:
        host, sep, port_text = value.rpartition(":")
        if not sep:
            raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:9808")
        if ":" in host:
            raise ValueError("put an IPv6 address in brackets: [::1]:9808")
        if not host:
            raise ValueError("give a host: 127.0.0.1:PORT, or 0.0.0.0:PORT for all interfaces")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} is not a number in 0..65535")
    return host, int(port_text)


def parse_ports(value: str) -> tuple[int, ...] | None:
    """``8000,8001`` -> (8000, 8001); empty -> None (find listeners from the workers)."""
    ports = []
    for item in value.replace(" ", "").split(","):
        if not item:
            continue
        if not item.isdigit() or not 1 <= int(item) <= 65535:
            raise ValueError(f"port {item!r} is not a number in 1..65535")
        ports.append(int(item))
    return tuple(ports) or None


def parse_seconds(value: str, *, positive: bool) -> float:
    try:
        seconds = float(value)
    except ValueError:
        raise ValueError("not a number of seconds") from None
    if not (seconds > 0 if positive else seconds >= 0) or seconds == float("inf"):
        raise ValueError("must be a finite number of seconds" + (" above 0" if positive else ""))
    return seconds


def parse_log_format(value: str) -> LogFormat:
    if value not in LOG_FORMATS:
        raise ValueError(f"expected one of {', '.join(LOG_FORMATS)}")
    return value


def env_name(dest: str) -> str:
    return ENV_PREFIX + dest.upper()


def add_sidecar_options(parser: argparse.ArgumentParser) -> None:
    """The sidecar's options, each with its environment variable in the help text."""
    group = parser.add_argument_group("sidecar options")

    def option(flag: str, metavar: str, text: str) -> None:
        dest = flag[2:].replace("-", "_")
        group.add_argument(flag, dest=dest, metavar=metavar, help=f"{text} [{env_name(dest)}]")

    option("--dir", "DIR", "spool directory the workers write to")
    option("--listen", "HOST:PORT", f"address of the HTTP side (default {DEFAULT_LISTEN})")
    option(
        "--poll-interval",
        "SECONDS",
        f"how often to read the spools and the kernel (default {DEFAULT_POLL_INTERVAL_S})",
    )
    option(
        "--threshold",
        "SECONDS",
        "a request that waited longer than this while its process was at capacity was "
        f"head-of-line blocked (default {DEFAULT_THRESHOLD_S})",
    )
    option(
        "--ports",
        "PORT,...",
        "the server's listening ports (default: found from the workers' own sockets)",
    )
    option("--log-format", "{json,console}", "log lines as JSON objects or for humans (json)")
    option(
        "--peer-addresses",
        "{show,hide}",
        "show each request's client address and port in the JSON API, or hide them (show)",
    )
    # For tests and embedding: MODULE:CALLABLE building the monitor from the same keyword
    # arguments as wsgiwatch.sidecar.monitor.Monitor. Deliberately left out of --help.
    group.add_argument("--monitor-factory", dest="monitor_factory", help=argparse.SUPPRESS)


def _setting(
    args: argparse.Namespace,
    environ: Mapping[str, str],
    dest: str,
    default: T,
    convert: Callable[[str], T],
) -> T:
    flag_value = getattr(args, dest, None)
    if flag_value is not None:
        raw, source = flag_value, "--" + dest.replace("_", "-")
    elif environ.get(env_name(dest)):
        raw, source = environ[env_name(dest)], env_name(dest)
    else:
        return default
    try:
        return convert(raw)
    except ValueError as exc:
        raise ConfigError(f"{source}={raw!r}: {exc}") from None


def settings_from(args: argparse.Namespace, environ: Mapping[str, str]) -> SidecarSettings:
    """Flags first, then ``WSGIWATCH_*`` variables from ``environ``, then the defaults."""
    host, port = _setting(args, environ, "listen", parse_listen(DEFAULT_LISTEN), parse_listen)
    return SidecarSettings(
        spool_dir=_setting(args, environ, "dir", None, str),
        host=host,
        port=port,
        poll_interval_s=_setting(
            args,
            environ,
            "poll_interval",
            DEFAULT_POLL_INTERVAL_S,
            lambda v: parse_seconds(v, positive=True),
        ),
        threshold_s=_setting(
            args,
            environ,
            "threshold",
            DEFAULT_THRESHOLD_S,
            lambda v: parse_seconds(v, positive=False),
        ),
        listener_ports=_setting(args, environ, "ports", None, parse_ports),
        log_format=_setting(args, environ, "log_format", "json", parse_log_format),
        monitor_factory=_setting(args, environ, "monitor_factory", DEFAULT_MONITOR_FACTORY, str),
        peer_addresses=_setting(args, environ, "peer_addresses", True, parse_show_hide),
    )


def parse_show_hide(value: str) -> bool:
    if value not in ("show", "hide"):
        raise ValueError("expected show or hide")
    return value == "show"


def load_factory(spec: str) -> Callable[..., Any]:
    module_name, sep, attribute = spec.partition(":")
    if not sep or not module_name or not attribute:
        raise ConfigError(f"monitor factory {spec!r}: expected MODULE:CALLABLE")
    try:
        factory = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"monitor factory {spec!r}: {exc}") from exc
    if not callable(factory):
        raise ConfigError(f"monitor factory {spec!r} is not callable")
    return cast(Callable[..., Any], factory)


def build_monitor(settings: SidecarSettings, spool_dir: str) -> MonitorProtocol:
    """The monitor for ``spool_dir`` (by default ``wsgiwatch.sidecar.monitor.Monitor``)."""
    monitor = load_factory(settings.monitor_factory)(
        spool_dir=spool_dir,
        poll_interval_s=settings.poll_interval_s,
        threshold_s=settings.threshold_s,
        listener_ports=settings.listener_ports,
    )
    missing = [
        name
        for name in ("poll", "collect", "incidents", "health")
        if not callable(getattr(monitor, name, None))
    ]
    if missing:
        raise ConfigError(
            f"monitor factory {settings.monitor_factory!r} built an object without "
            + ", ".join(missing)
        )
    return cast(MonitorProtocol, monitor)


def close_monitor(monitor: MonitorProtocol) -> None:
    """Call the monitor's optional ``close()`` (not part of the protocol)."""
    close = getattr(monitor, "close", None)
    if callable(close):
        close()


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "sidecar",
        help="serve /metrics about the workers that write to a spool directory",
        description="Read the workers' spools and the kernel's view of their sockets, find "
        "requests stalled behind others in the same process, and serve /metrics (Prometheus "
        "text or OpenMetrics), /healthz and /api/incidents. Without --dir or WSGIWATCH_DIR it "
        "reads the per-user directory the middleware also defaults to. SIGTERM or SIGINT "
        "stops it.",
    )
    add_sidecar_options(parser)
    parser.set_defaults(handler=command)


def command(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    import structlog

    from wsgiwatch.logs import configure_logging
    from wsgiwatch.sidecar.server import SidecarServer, serve
    from wsgiwatch.spool.writer import default_spool_dir, ensure_private_dir

    settings = settings_from(args, environ)
    configure_logging(settings.log_format)
    log = structlog.get_logger("wsgiwatch.sidecar")
    spool_dir = settings.spool_dir or default_spool_dir()
    try:
        ensure_private_dir(spool_dir)
    except OSError as exc:
        log.error("sidecar.spool_dir_refused", spool_dir=spool_dir, error=str(exc))
        return 1
    monitor = build_monitor(settings, spool_dir)
    try:
        try:
            server = SidecarServer(
                monitor,
                host=settings.host,
                port=settings.port,
                poll_interval_s=settings.poll_interval_s,
                peer_addresses=settings.peer_addresses,
            )
        except OSError as exc:
            log.error(
                "sidecar.listen_failed", host=settings.host, port=settings.port, error=str(exc)
            )
            return 1
        log.info(
            "sidecar.configured",
            spool_dir=spool_dir,
            threshold_s=settings.threshold_s,
            listener_ports=list(settings.listener_ports or ()) or None,
        )
        return serve(server)
    finally:
        close_monitor(monitor)
