"""The sidecar's HTTP side, next to its poll loop.

A background thread (:class:`~wsgiwatch.sidecar.poll_loop.PollLoop`) calls
``monitor.poll()`` on a fixed-rate schedule; a :class:`~wsgiwatch.sidecar.bounded_http.
BoundedHTTPServer` answers scrapes meanwhile, so a slow poll never makes a scrape wait, and
a flood of connections or slow clients cannot take its threads, memory or time (one I/O
thread, two answering threads, at most 256 connections, timeouts on every stage).
``collect()``, ``incidents()`` and ``health()`` are therefore called while a poll may be
running in another thread: the monitor must allow that.

Routes:

- ``/metrics``: the monitor's metric families plus the loop's own counters, from a private
  ``CollectorRegistry`` (never the global one), as Prometheus text 0.0.4 or OpenMetrics
  according to ``Accept``, gzip-compressed when ``Accept-Encoding`` allows it.
- ``/healthz``: ``monitor.health()`` plus the loop's state as JSON; 503 once the last
  successful poll is older than 3 poll intervals (see :mod:`wsgiwatch.sidecar.poll_loop`).
- ``/api/incidents?limit=N``: ``{"incidents": [...]}``, newest first.
- ``/api/requests?since=SECONDS``: ``monitor.recent_requests(since)`` (default 60 s): the
  finished requests of that window with their waits, verdicts and blockers (``wsgiwatch
  timeline`` and ``diagnose`` read it).
- ``/api/state``: ``monitor.state()``: workers and what each runs now, stalls, kernel
  backlogs (``wsgiwatch top`` reads it).

Client addresses: ``/api/requests``, ``/api/incidents`` and ``/api/state`` show each
request's ``peer`` (the client's address and port, as the worker saw it: the front proxy's
behind one). ``peer_addresses=False`` (``wsgiwatch sidecar --peer-addresses hide``) puts a
keyed hash there instead (:class:`PeerPseudonyms`); nothing else about a client is ever
recorded or served (docs/privacy.md).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import secrets
import signal
import socket
import threading
from collections.abc import Callable, Iterable
from types import FrameType
from typing import Any

import structlog
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import CounterMetricFamily, Metric
from prometheus_client.registry import CollectorRegistry
from werkzeug.wrappers import Request, Response

from wsgiwatch.sidecar.bounded_http import BoundedHTTPServer
from wsgiwatch.sidecar.contract import MonitorProtocol
from wsgiwatch.sidecar.poll_loop import STOP_JOIN_TIMEOUT_S, PollLoop

log = structlog.get_logger("wsgiwatch.sidecar")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 9808
#: Largest ``limit`` accepted by /api/incidents.
MAX_INCIDENTS = 1000
#: Largest ``since`` (seconds) accepted by /api/requests; the monitor keeps fewer anyway.
MAX_SINCE_S = 86400.0
DEFAULT_SINCE_S = 60.0
#: How often the HTTP thread checks for shutdown and timeouts.
SHUTDOWN_POLL_S = 0.1
#: Open HTTP connections kept at most (past it the least recently active one is closed),
#: and threads that answer requests (one more thread does all the socket I/O).
DEFAULT_MAX_CONNECTIONS = 256
DEFAULT_HTTP_WORKERS = 2


class PeerPseudonyms:
    """What ``peer_addresses=False`` puts where a client's address and port were: a keyed
    hash (``peer-`` and 12 hex digits), so one connection keeps one name (``diagnose``
    still counts connections per worker, ``timeline`` still tells clients apart) while the
    address cannot be recovered or matched across sidecar restarts (a new random key each
    time)."""

    def __init__(self) -> None:
        self._key = secrets.token_bytes(16)

    def name(self, peer: str) -> str:
        digest = hashlib.blake2b(peer.encode(), key=self._key, digest_size=6).hexdigest()
        return f"peer-{digest}"

    def scrub(self, data: Any) -> Any:
        """``data`` with every ``peer`` value replaced, at any depth (requests, their
        blockers, incidents' victims, stalls)."""
        if isinstance(data, dict):
            return {
                key: self.name(str(value)) if key == "peer" and value else self.scrub(value)
                for key, value in data.items()
            }
        if isinstance(data, list):
            return [self.scrub(item) for item in data]
        return data


class _LoopCollector:
    """The poll loop's own counters, next to the monitor's families."""

    def __init__(self, loop: PollLoop) -> None:
        self.loop = loop

    def collect(self) -> Iterable[Metric]:
        yield CounterMetricFamily(
            "wsgiwatch_sidecar_poll_errors",
            "Sidecar polls that raised an error (logged as sidecar.poll_failed).",
            value=self.loop.failures,
        )
        yield CounterMetricFamily(
            "wsgiwatch_sidecar_poll_overruns",
            "Poll ticks skipped because the previous poll took longer than the interval.",
            value=self.loop.overruns,
        )


def _json(data: Any, status: int = 200) -> Response:
    body = json.dumps(data, default=str, separators=(",", ":")) + "\n"
    return Response(body, status=status, content_type="application/json")


def _text(body: str, status: int) -> Response:
    return Response(body, status=status, content_type="text/plain; charset=utf-8")


class SidecarApp:
    """The WSGI application behind the sidecar's HTTP port."""

    def __init__(
        self, monitor: MonitorProtocol, loop: PollLoop, *, peer_addresses: bool = True
    ) -> None:
        self.monitor = monitor
        self.loop = loop
        self.peer_addresses = peer_addresses
        self._pseudonyms = PeerPseudonyms()
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(monitor)
        self.registry.register(_LoopCollector(loop))
        self._routes: dict[str, Callable[[Request], Response]] = {
            "/metrics": self.metrics,
            "/healthz": self.healthz,
            "/api/incidents": self.incidents,
            "/api/requests": self.requests,
            "/api/state": self.state,
        }

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        request = Request(environ)
        handler = self._routes.get(request.path)
        if handler is None:
            response = _text("not found\n", 404)
        elif request.method not in ("GET", "HEAD"):
            response = _text("method not allowed\n", 405)
            response.headers["Allow"] = "GET, HEAD"
        else:
            response = handler(request)
        return response(environ, start_response)

    def _peers(self, data: Any) -> Any:
        return data if self.peer_addresses else self._pseudonyms.scrub(data)

    def metrics(self, request: Request) -> Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        try:
            body = encoder(self.registry)
        except Exception:
            log.exception("sidecar.scrape_failed")
            return _text("collecting metrics failed, see the sidecar's log\n", 500)
        response = Response(body, content_type=content_type)
        response.vary.update(("Accept", "Accept-Encoding"))
        if request.accept_encodings["gzip"] > 0:
            response.set_data(gzip.compress(body, compresslevel=6))
            response.content_encoding = "gzip"
        return response

    def healthz(self, request: Request) -> Response:
        try:
            facts = dict(self.monitor.health())
        except Exception as exc:
            log.exception("sidecar.health_failed")
            facts = {"health_error": f"{type(exc).__name__}: {exc}"}
        facts.update(self.loop.status())
        ok = self.loop.healthy() and "health_error" not in facts
        return _json(facts, 200 if ok else 503)

    def incidents(self, request: Request) -> Response:
        raw = request.args.get("limit", "100")
        try:
            limit = int(raw)
        except ValueError:
            limit = -1
        if not 0 <= limit <= MAX_INCIDENTS:
            return _json({"error": f"limit must be an integer in 0..{MAX_INCIDENTS}"}, 400)
        try:
            found = self.monitor.incidents(limit)
        except Exception:
            log.exception("sidecar.incidents_failed")
            return _json({"error": "reading incidents failed, see the sidecar's log"}, 500)
        return _json({"incidents": self._peers(found)})

    def requests(self, request: Request) -> Response:
        raw = request.args.get("since", str(DEFAULT_SINCE_S))
        try:
            since = float(raw)
        except ValueError:
            since = -1.0
        if not 0 < since <= MAX_SINCE_S:  # also refuses nan
            return _json(
                {"error": f"since must be a number of seconds in (0, {MAX_SINCE_S:g}]"}, 400
            )
        try:
            found = self.monitor.recent_requests(since)
        except Exception:
            log.exception("sidecar.requests_failed")
            return _json({"error": "reading recent requests failed, see the sidecar's log"}, 500)
        return _json(self._peers(found))

    def state(self, request: Request) -> Response:
        try:
            found = self.monitor.state()
        except Exception:
            log.exception("sidecar.state_failed")
            return _json({"error": "reading the live state failed, see the sidecar's log"}, 500)
        return _json(self._peers(found))


class SidecarServer:
    """Serves one monitor's HTTP side on ``host:port`` and polls it every interval.

    The socket is bound here (``port=0`` picks a free one; see :attr:`port`; a taken port
    raises ``OSError``); nothing runs until :meth:`start`. :meth:`stop` shuts the HTTP side
    down and joins the poll thread.
    """

    def __init__(
        self,
        monitor: MonitorProtocol,
        *,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        poll_interval_s: float = 0.5,
        peer_addresses: bool = True,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        http_workers: int = DEFAULT_HTTP_WORKERS,
    ) -> None:
        self.monitor = monitor
        self.loop = PollLoop(monitor, poll_interval_s)
        self.app = SidecarApp(monitor, self.loop, peer_addresses=peer_addresses)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.create_server((host, port), family=family, backlog=128)
        self._http = BoundedHTTPServer(
            listener, self.app, max_connections=max_connections, workers=http_workers
        )
        self.host = host
        self.port: int = self._http.socket.getsockname()[1]
        self._http_thread = threading.Thread(
            target=self._http.serve_forever,
            kwargs={"poll_interval": SHUTDOWN_POLL_S},
            name="wsgiwatch-http",
            daemon=True,
        )
        self._started = False
        self._stopped = False

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> None:
        self._started = True
        self.loop.start()
        self._http_thread.start()
        log.info("sidecar.started", url=self.url, poll_interval_s=self.loop.interval_s)

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._started:
            self._http.shutdown()  # returns once serve_forever has left its loop
            self._http_thread.join()
        self._http.server_close()
        if self._started and not self.loop.stop():
            log.warning("sidecar.poll_thread_stuck", waited_s=STOP_JOIN_TIMEOUT_S)
        log.info("sidecar.stopped", polls=self.loop.polls, poll_failures=self.loop.failures)

    def __enter__(self) -> SidecarServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def serve(server: SidecarServer, signals: Iterable[int] = (signal.SIGTERM, signal.SIGINT)) -> int:
    """Run ``server`` until one of ``signals`` arrives, then stop it cleanly; returns 0.

    Must be called from the main thread (signal handlers are installed there and restored
    afterwards).
    """
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, frame: FrameType | None) -> None:
        # No logging here: a handler that writes to stderr while the main thread is
        # writing there too raises "reentrant call".
        received.append(signum)
        stop.set()

    previous = {signum: signal.signal(signum, on_signal) for signum in signals}
    try:
        server.start()
        stop.wait()
        log.info("sidecar.stopping", signal=signal.Signals(received[0]).name)
    finally:
        server.stop()
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0
