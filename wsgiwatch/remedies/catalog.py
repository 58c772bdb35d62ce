"""Which server serves the app, how it decides to accept, and the remedies proven for it.

The knowledge here comes from each server's source (versions installed with the tests):

- **gunicorn gthread** (``workers/gthread.py``): the main loop accepts while
  ``nr_conns < worker_connections``; a connection counts from accept until it is closed,
  kept-alive idle ones included. ``--worker-connections`` equal to ``--threads`` gates
  accepting on a free thread. Then ``max_keepalived = worker_connections - threads`` is 0:
  gunicorn closes every connection after its response (and warns unless ``--keep-alive 0``).
  Proven by ``tests/e2e/test_remedies.py``.
- **gunicorn gevent** (``workers/ggevent.py``): ``--worker-connections`` is the size of the
  greenlet pool that stops the accept loop when full, but a request that blocks the event
  loop blocks every greenlet: no accept rule fixes that. No remedy is proven here.
- **gunicorn sync**, **uWSGI**, **mod_wsgi** daemon mode: a busy process (or thread) does
  not accept; waiting already happens in the kernel backlog. Nothing to gate.
- **waitress** (``server.py``): ``connection_limit`` stops accepting at that many entries
  in the asyncore map (the listener and trigger count, kept-alive channels too) and logs a
  warning at each crossing; its thread pool is one per process, so with one process there
  is no idle sibling to leave the connection to. No remedy is proven here.
- **cheroot** (``workers/threadpool.py``): ``accepted_queue_size`` bounds the queue after
  accept; a full queue blocks the accepting thread, then answers 503: it drops instead of
  gating. No remedy is proven here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from wsgiwatch.remedies.model import Shape

Family = Literal["gunicorn", "waitress", "cheroot", "uwsgi", "mod_wsgi", "werkzeug", "other"]
Kind = Literal[
    "gthread", "sync", "gevent", "waitress", "cheroot", "uwsgi", "mod_wsgi", "werkzeug", "other"
]

#: How ``SERVER_SOFTWARE`` starts, lower-cased, for each family (first match wins).
_PREFIXES: tuple[tuple[str, Family], ...] = (
    ("gunicorn", "gunicorn"),
    ("waitress", "waitress"),
    ("cheroot", "cheroot"),
    ("cherrypy", "cheroot"),
    ("uwsgi", "uwsgi"),
    ("apache", "mod_wsgi"),
    ("mod_wsgi", "mod_wsgi"),
    ("werkzeug", "werkzeug"),
)
#: Servers whose busy processes do not accept: the kernel backlog is where requests wait.
GATED_KINDS: frozenset[Kind] = frozenset({"sync", "uwsgi", "mod_wsgi"})


def server_family(server_software: str) -> Family:
    text = server_software.strip().lower()
    for prefix, family in _PREFIXES:
        if text.startswith(prefix) or (family == "mod_wsgi" and "mod_wsgi" in text):
            return family
    return "other"


@dataclass(frozen=True)
class Deployment:
    """What the sidecar knows of the server: its workers' reports."""

    family: Family
    workers: int
    threads: int  # capacity per worker
    multithread: bool  # wsgi.multithread: gunicorn's gthread and gevent say True
    cooperative: bool  # greenlets

    @property
    def kind(self) -> Kind:
        if self.family != "gunicorn":
            return self.family
        if self.cooperative:
            return "gevent"
        return "gthread" if self.multithread else "sync"

    def shape(self) -> Shape:
        """Today's configuration as the model sees it (gunicorn's default
        worker_connections of 1000 for greedy gunicorn workers)."""
        gate = self.kind in GATED_KINDS
        limit = 1000 if self.kind in ("gthread", "gevent") else None
        return Shape(max(1, self.workers), max(1, self.threads), gate, limit)


@dataclass(frozen=True)
class Remedy:
    """A change proven on the real server (see ``tests/e2e/test_remedies.py``)."""

    kind: Kind
    what: str  # one line: what it does
    flags: str  # exactly what to add to the command line
    config: str  # the same in the server's configuration file
    cost: str
    shape: Shape  # today's configuration with the change made


def remedies_for(d: Deployment) -> list[Remedy]:
    """The proven remedies for this deployment, most direct first (empty: none proven)."""
    if d.kind == "gthread":
        threads = max(1, d.threads)
        return [
            Remedy(
                kind="gthread",
                what="stop each worker accepting while all its threads are busy, so new "
                "connections wait in the kernel backlog for the first free thread in any "
                "worker",
                flags=f"--worker-connections {threads} --keep-alive 0",
                config=f"worker_connections = {threads}; keepalive = 0",
                cost="no keep-alive: gunicorn closes every connection after its response "
                "(with --worker-connections equal to --threads it cannot keep any alive), so "
                "each request opens a new TCP connection (behind nginx without upstream "
                "keepalive, as by default, nothing changes). A higher --worker-connections "
                "keeps that many idle connections per worker, and lets that many requests "
                "be accepted by a busy worker again.",
                shape=Shape(max(1, d.workers), threads, gate=True),
            )
        ]
    return []


def already_right(kind: Kind) -> str | None:
    """For servers that gate accepting themselves: why no accept remedy applies."""
    if kind == "sync":
        return (
            "gunicorn's sync workers accept only when free: requests wait in the kernel "
            "backlog, where the next free worker takes them."
        )
    if kind == "uwsgi":
        return (
            "uWSGI's workers accept only when free: requests wait in the kernel backlog, "
            "where the next free worker takes them."
        )
    if kind == "mod_wsgi":
        return (
            "mod_wsgi's daemon processes accept from their socket only with a free thread: "
            "requests wait in its backlog, where the next free process takes them."
        )
    return None
