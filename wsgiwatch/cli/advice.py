"""What to change, for the server that serves the app: the advice ``wsgiwatch diagnose`` gives.

The server is known from the ``SERVER_SOFTWARE`` its workers reported (the spool keeps the
first one). The worker class is not in it (gunicorn says ``gunicorn/23.0.0`` for sync,
gthread and gevent alike), but a gunicorn that blocks is a greedy one, gthread or gevent:
sync workers accept only when free.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from wsgiwatch.cli.diagnosis import Diagnosis

Family = Literal["gunicorn", "waitress", "cheroot", "uwsgi", "mod_wsgi", "werkzeug", "other"]

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


def server_family(server_software: str) -> Family:
    text = server_software.strip().lower()
    for prefix, family in _PREFIXES:
        if text.startswith(prefix) or (family == "mod_wsgi" and "mod_wsgi" in text):
            return family
    return "other"


@dataclass(frozen=True)
class Situation:
    """What the advice depends on."""

    family: Family
    server: str  # SERVER_SOFTWARE as reported, for the text
    capacity: int  # the largest worker capacity seen (threads per process)
    workers: int
    blocking: bool
    slow_routes: tuple[str, ...]  # the routes that blocked most, worst first
    worst_wait_s: float
    keep_alive_victims: int  # blocked requests that came on a kept-alive connection
    accept_hook: bool  # on in some worker at least: the hook's setup is in place
    cooperative: bool  # greenlets (gevent) rather than threads
    backlog_mean_s: float | None  # mean wait in the kernel accept queue, if measured


def situation_of(d: Diagnosis) -> Situation:
    return Situation(
        family=server_family(d.server),
        server=d.server,
        capacity=d.capacity,
        workers=d.workers_live,
        blocking=d.verdict == "blocking",
        slow_routes=tuple(b.route for b in d.blocking_routes),
        worst_wait_s=d.worst_wait_s,
        keep_alive_victims=d.keep_alive_victims,
        accept_hook=d.accept_hook or d.hook_workers > 0,
        cooperative=d.cooperative,
        backlog_mean_s=d.backlog_mean_s,
    )


def _routes(s: Situation) -> str:
    return ", ".join(s.slow_routes[:3]) if s.slow_routes else "the slow routes"


def _more_threads(s: Situation) -> int:
    return max(4, 2 * s.capacity)


def _gunicorn(s: Situation) -> list[str]:
    if s.cooperative:
        out = [
            f"gevent workers: a request on {_routes(s)} keeps the event loop from switching "
            "(CPU work, or a C library gevent cannot patch), so every other connection in "
            "that worker waits. Move that work off the loop (a thread pool, or a separate "
            "pool of sync workers for those routes).",
        ]
    else:
        out = [
            "gunicorn's gthread workers accept connections while all their threads are busy "
            "and queue them inside the process; a busy sync worker does not accept at all.",
            f"Give each worker more threads than slow requests it runs at once: --threads "
            f"{_more_threads(s)} (now {s.capacity}). Waiting then starts only when that many "
            "slow requests overlap in one process.",
            "Or switch to --worker-class sync with enough --workers: requests then wait in "
            "the kernel backlog, where the next free worker takes them. Keep a buffering "
            "proxy (nginx) in front, as sync workers must not talk to slow clients directly.",
        ]
    out.append(
        f"Or serve {_routes(s)} from a separate gunicorn pool (its own port or socket, "
        "routed there by the proxy), so slow requests cannot hold fast ones hostage."
    )
    if s.keep_alive_victims:
        out.append(
            f"{s.keep_alive_victims} of the blocked requests came on kept-alive "
            "connections, which stay bound to their worker: lower --keep-alive (default "
            "2 s), or have the proxy open short-lived upstream connections."
        )
    return out


def _waitress(s: Situation) -> list[str]:
    return [
        "waitress's I/O thread accepts and reads every request, then queues it for the "
        "next free thread (its log says 'Task queue depth is N'): a slow request holds one "
        "of its threads, and everything queued waits for it.",
        f"Raise threads: waitress-serve --threads={_more_threads(s)} or serve(app, "
        f"threads={_more_threads(s)}) (now {s.capacity}).",
        f"Or run several waitress processes behind the proxy and give {_routes(s)} "
        "their own process.",
    ]


def _cheroot(s: Situation) -> list[str]:
    return [
        "cheroot accepts connections while all its threads are busy; they wait inside the "
        "process with their request unread.",
        f"Raise numthreads (now {s.capacity}) to cover the slow requests you run at once, "
        f"or serve {_routes(s)} from a separate process.",
    ]


def _uwsgi(s: Situation) -> list[str]:
    return [
        f"Raise --threads (now {s.capacity}) or --processes, or give {_routes(s)} their own "
        "uWSGI instance (or a mule/spooler for background work). Keep --thunder-lock on.",
    ]


def _mod_wsgi(s: Situation) -> list[str]:
    return [
        f"Raise threads= in WSGIDaemonProcess (now {s.capacity}), or delegate "
        f"{_routes(s)} to a separate daemon process group (WSGIProcessGroup in a "
        "<Location> block).",
    ]


def _werkzeug(s: Situation) -> list[str]:
    return [
        "The Werkzeug development server is not meant for production traffic: serve the "
        "app with gunicorn (sync workers), uWSGI or mod_wsgi.",
    ]


def _other(s: Situation) -> list[str]:
    what = s.server or "this server"
    return [
        f"{what} accepts connections while its threads are busy. Give each process more "
        f"threads than slow requests it runs at once, run {_routes(s)} in a separate "
        "process pool, or use a server whose busy workers do not accept (gunicorn sync, "
        "uWSGI, mod_wsgi), so that waiting happens in the kernel backlog instead.",
    ]


_BY_FAMILY = {
    "gunicorn": _gunicorn,
    "waitress": _waitress,
    "cheroot": _cheroot,
    "uwsgi": _uwsgi,
    "mod_wsgi": _mod_wsgi,
    "werkzeug": _werkzeug,
    "other": _other,
}


def _proxy(s: Situation) -> list[str]:
    return [
        "Behind a proxy: its upstream read timeout (nginx proxy_read_timeout, default 60 s) "
        "also runs while a request is queued inside a worker; keep it above your slowest "
        f"route plus the worst wait seen here ({s.worst_wait_s:.2f} s), or clients get 504s "
        "for requests that were only waiting.",
        "Keep the proxy's buffering on (nginx proxy_buffering and proxy_request_buffering, "
        "both on by default), so no worker is held by a slow client.",
    ]


def advise(s: Situation) -> list[str]:
    """Concrete changes, most useful first; empty when there is nothing to change."""
    out: list[str] = []
    if s.blocking:
        out += _BY_FAMILY[s.family](s)
        out += _proxy(s)
    elif s.backlog_mean_s is not None and s.backlog_mean_s > 0.1:
        out.append(
            f"Connections waited {s.backlog_mean_s * 1000:.0f} ms on average in the kernel "
            "backlog: that is the right place to wait, but it means every worker was busy. "
            "Add workers (or threads) if that wait matters."
        )
    # Never what is in place already: a hook in some workers means the setup is done, and
    # gevent workers accept in their own loop, where no hook can reach (install_gunicorn).
    if not s.accept_hook and not s.cooperative and s.family in ("gunicorn", "waitress"):
        out.append(
            "Turn on the accept hook for exact accept times and live stalls: gunicorn "
            "-c python:wsgiwatch.gunicorn_config, or wsgiwatch.worker.accept_hook.serve_waitress."
        )
    return out
