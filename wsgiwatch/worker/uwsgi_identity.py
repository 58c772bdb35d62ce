"""The peer port of the connection a uWSGI worker serves, read from its socket only while
the sidecar asks for it.

uWSGI 2.0 puts no ``REMOTE_PORT`` in the environ with ``--http-socket``; behind its own
``--http`` router or nginx's ``uwsgi_pass`` the ``REMOTE_PORT`` it passes is the client's
port to the proxy, not this connection's. Either way a record cannot be matched with the
kernel's view of the worker's listener, where a uWSGI request waits (a worker accepts only
when free). The connection's own peer port can: ``getpeername`` on
``uwsgi.connection_fd()``.

That is a syscall, so it is paid only when it can matter: the sidecar writes a deadline
into the spool header (``OFF_IDENTITY_UNTIL``) while it sees connections waiting in the
listen backlog of a listener this worker holds, and clears it once it sees none. A request
that finds it unset (the fast path: nothing queued) pays one byte read, no syscall. The C
path reads the same word and calls :func:`connection_port`.
"""

from __future__ import annotations

import socket
import sys
import time
from typing import Final

#: What :func:`connection_port` gives when there is no port to read.
NO_PORT: Final = -1

_monotonic_ns = time.monotonic_ns
_getdefaulttimeout = socket.getdefaulttimeout
_socket = socket.socket
_AF_INET6 = socket.AF_INET6
_SOCK_STREAM = socket.SOCK_STREAM


def connection_port(until_ns: int) -> int:
    """The peer port of the connection this request came on, or :data:`NO_PORT` when the
    sidecar's request has lapsed (``until_ns``, monotonic), the server is not uWSGI, or the
    socket has no port (a unix socket). Never raises: the app must not see our errors."""
    if _monotonic_ns() >= until_ns:
        return NO_PORT
    uwsgi = sys.modules.get("uwsgi")
    if uwsgi is None:
        return NO_PORT
    # A socket object built on a fd turns it non-blocking when a default timeout is set:
    # that would change uWSGI's own socket under it, so then nothing is read.
    if _getdefaulttimeout() is not None:
        return NO_PORT
    try:
        fd = uwsgi.connection_fd()
        # Family, type and protocol given, so nothing is probed: getpeername is the only
        # syscall. AF_INET6 sizes the address buffer for either family; the address
        # returned carries its own family. detach(): the fd stays uWSGI's, open.
        sock = _socket(_AF_INET6, _SOCK_STREAM, 0, fd)
        try:
            peer = sock.getpeername()
        finally:
            sock.detach()
    except Exception:  # not in a request, a closed fd, an odd uwsgi module
        return NO_PORT
    if isinstance(peer, tuple) and len(peer) >= 2 and isinstance(peer[1], int):
        return peer[1] & 0xFFFF
    return NO_PORT  # a unix socket: its connection is found by inode, not by port
