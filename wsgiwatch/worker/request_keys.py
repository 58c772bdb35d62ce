"""What a request's environ gives its record: peer, port, method, route and status, each
turned into the value or bytes the spool stores, through bounded caches.

A server hands over the same few values again and again (a handful of peers, ports and
paths); each is encoded once and then found in a dict. Every cache is bounded: a flood of
distinct values costs time, never memory. The C path reads these very dicts and calls these
functions for what is not cached yet (:mod:`.bridge` hands them over), so the two paths
store the same bytes.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from wsgiwatch.spool import layout as fmt
from wsgiwatch.worker.routes import BytesCache, path_route_bytes, peer_bytes, template_route_bytes

Environ = dict[str, Any]

METHOD_CODES: Final = fmt.METHOD_CODES

# The caches, shared by every WSGIWatch of the process and by the C path.
templates = BytesCache(template_route_bytes)  # a framework's route template -> bytes
peers: dict[str, bytes] = {}  # REMOTE_ADDR -> stored bytes
ports: dict[object, int] = {}  # REMOTE_PORT / SERVER_PORT text -> number
path_bytes: dict[str, bytes] = {}  # SCRIPT_NAME + PATH_INFO -> folded route bytes
statuses: dict[str, int] = {}  # status line -> code

_PEERS_KEPT: Final = 4096
_PORTS_KEPT: Final = 70000  # every port, and then some
_PATHS_KEPT: Final = 2048
_STATUSES_KEPT: Final = 512

_UWSGI_VERSION: Final = "uwsgi.version"
_SANE_KEYS: Final = ("REMOTE_ADDR", "REMOTE_PORT", "PATH_INFO", "REQUEST_METHOD", "SCRIPT_NAME")


def encode_peer(peer: str) -> bytes:
    if len(peers) >= _PEERS_KEPT:
        peers.clear()
    value = peers[peer] = peer_bytes(peer)
    return value


def port_number(text: object) -> int:
    try:
        port: int = int(text) & 0xFFFF  # type: ignore[call-overload]
    except (TypeError, ValueError):
        return 0
    if isinstance(text, str):
        if len(ports) >= _PORTS_KEPT:
            ports.clear()
        ports[text] = port
    return port


def route_for_path(path: str) -> bytes:
    route = path_route_bytes(path)
    if len(path_bytes) >= _PATHS_KEPT:
        path_bytes.clear()
    path_bytes[path] = route
    return route


def status_code(status: str) -> int:
    """The code of a status line (``"404 Not Found"`` -> 404); 0 when there is none."""
    try:
        code = int(status[:3])
    except (TypeError, ValueError):
        return 0
    code = code if 0 < code < 1000 else 0
    if len(statuses) < _STATUSES_KEPT:
        statuses[status] = code
    return code


def request_keys(get: Callable[[str], Any]) -> tuple[str, int, int, bytes, bytes]:
    """(peer, peer port, method code, peer bytes, route bytes) through the caches."""
    peer = get("REMOTE_ADDR") or ""
    port_text = get("REMOTE_PORT")
    port = ports.get(port_text)
    if port is None:
        port = port_number(port_text)
    path = get("PATH_INFO") or ""
    script = get("SCRIPT_NAME")
    if script:  # an app mounted under a prefix: the route is the whole path
        path = script + path
    return (
        peer,
        port,
        METHOD_CODES.get(get("REQUEST_METHOD"), 0),
        peers.get(peer) or encode_peer(peer),
        path_bytes.get(path) or route_for_path(path),
    )


def sane_get(environ: Environ) -> Callable[[str], Any]:
    """``environ.get`` for the keys we read, with anything but a str turned into ''."""
    clean: dict[str, str] = {}
    for key in _SANE_KEYS:
        try:
            value = environ.get(key)
        except Exception:
            value = None
        clean[key] = value if isinstance(value, str) else ""
    return clean.get


def odd_request_keys(environ: Environ) -> tuple[str, int, int, bytes, bytes]:
    """:func:`request_keys` of an environ holding bytes, numbers or unhashable values."""
    return request_keys(sane_get(environ))


def server_software(environ: Environ) -> str:
    """SERVER_SOFTWARE, or what else says which server this is (uWSGI sets none)."""
    software = str(environ.get("SERVER_SOFTWARE") or "")
    if not software and _UWSGI_VERSION in environ:
        version = environ[_UWSGI_VERSION]
        if isinstance(version, bytes):
            version = version.decode("ascii", "replace")
        software = f"uWSGI/{version}"
    return software
