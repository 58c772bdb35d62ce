"""What to change, for the server that serves the app: the advice ``wsgiwatch diagnose``
gives.

Three rules. A remedy is offered only if it is proven on that server
(:mod:`wsgiwatch.remedies.catalog`, ``tests/e2e/test_remedies.py``), with the exact flags
for this deployment, what it costs, and what it would have done with the traffic just
recorded (:mod:`wsgiwatch.remedies.forecast`), or why no prediction could be made. Where
nothing is proven, the advice says so and explains what happens, without guessing at
settings. Nothing already in place is advised: the accept hook is not offered where some
worker has it or none can (gevent), and a remedy is offered only while requests are found
blocked, which its own effect rules out (with ``--worker-connections`` equal to
``--threads``, no gthread worker accepts while its threads are all busy).
"""

from __future__ import annotations

from dataclasses import dataclass

from wsgiwatch.cli.common import seconds_text
from wsgiwatch.cli.diagnosis import Diagnosis, Snapshot
from wsgiwatch.remedies.catalog import Deployment, Kind, Remedy, already_right, remedies_for
from wsgiwatch.remedies.forecast import Forecast, Scenario
from wsgiwatch.remedies.predict import predict

#: Mean kernel backlog wait above which a healthy server is told every worker was busy.
LONG_BACKLOG_S = 0.1


@dataclass(frozen=True)
class Advice:
    """One piece of advice: a paragraph, and for a remedy exactly what to change."""

    text: str
    flags: str | None = None  # the command-line change, exactly
    config: str | None = None  # the same in the server's configuration file
    cost: str | None = None
    prediction: str | None = None  # what it would have done, or why that is unknown


@dataclass(frozen=True)
class Situation:
    """What the advice depends on."""

    deployment: Deployment
    server: str  # SERVER_SOFTWARE as reported, for the text
    blocking: bool
    slow_routes: tuple[str, ...]  # the routes that blocked most, worst first
    worst_wait_s: float
    keep_alive_victims: int  # blocked requests that came on a kept-alive connection
    accept_hook: bool  # on in some worker at least: the hook's setup is in place
    backlog_mean_s: float | None  # mean wait in the kernel accept queue, if measured


def advice_for(snapshot: Snapshot, d: Diagnosis) -> tuple[list[Advice], Forecast]:
    """The advice for a diagnosis, each remedy with what it would have done with the
    snapshot's recorded requests."""
    forecast = predict(
        snapshot.recent.get("requests", []),
        d.deployment,
        float(snapshot.state.get("threshold_s") or 0.0),
    )
    return advise(situation_of(d), forecast), forecast


def situation_of(d: Diagnosis) -> Situation:
    return Situation(
        deployment=d.deployment,
        server=d.server,
        blocking=d.verdict == "blocking",
        slow_routes=tuple(b.route for b in d.blocking_routes),
        worst_wait_s=d.worst_wait_s,
        keep_alive_victims=d.keep_alive_victims,
        accept_hook=d.accept_hook or d.hook_workers > 0,
        backlog_mean_s=d.backlog_mean_s,
    )


def _routes(s: Situation) -> str:
    return ", ".join(s.slow_routes[:3]) if s.slow_routes else "the slow routes"


def prediction_text(forecast: Forecast | None, remedy: Remedy) -> str:
    """What the remedy would have done with the recorded traffic, in one line."""
    if forecast is None:
        return "not predicted: no recorded traffic was read"
    option = next((o for o in forecast.options if o.label == remedy.flags), None)
    if not forecast.trusted or option is None or forecast.measured is None:
        return f"not predicted: {forecast.reason or 'no forecast for it'}"
    return "with the requests of this window, " + change_line(forecast.measured, option)


def change_line(measured: Scenario, option: Scenario) -> str:
    """The busiest routes' p99 now and with ``option``, blocking, the backlog's p99."""
    parts = []
    for route in measured.routes[:3]:
        after = option.route(route.route)
        if after is not None:
            parts.append(
                f"{route.route} p99 {seconds_text(route.p99_s)} -> {seconds_text(after.p99_s)}"
            )
    parts.append("nothing blocked" if not option.blocked else f"{option.blocked} blocked")
    parts.append(f"kernel backlog p99 {seconds_text(option.backlog_p99_s)}")
    return ", ".join(parts)


def _why(kind: Kind, s: Situation) -> str:
    """What this server does that lets requests wait inside a busy process."""
    if kind == "gthread":
        kept = (
            f" {s.keep_alive_victims} of the blocked requests came on kept-alive connections, "
            "which stay bound to their worker."
            if s.keep_alive_victims
            else ""
        )
        return (
            "gunicorn's gthread workers accept new connections while all their threads are "
            "busy (until --worker-connections, default 1000) and queue them inside the "
            "process, even when another worker has a free thread." + kept
        )
    if kind == "gevent":
        return (
            f"gevent workers: a request on {_routes(s)} keeps the event loop from switching "
            "(CPU work, or a C library gevent cannot patch), so every other connection in "
            "that worker waits. No accept setting fixes that: the work has to leave the "
            "loop (a thread pool, or a separate pool of workers for those routes)."
        )
    if kind == "waitress":
        return (
            "waitress's I/O thread accepts and reads every request, then queues it for the "
            "next free thread (its log says 'Task queue depth is N'). It has no setting "
            "that stops accepting while its threads are busy (connection_limit also counts "
            "idle kept-alive connections), and wsgiwatch has proven no remedy for it yet."
        )
    if kind == "cheroot":
        return (
            "cheroot accepts connections while all its threads are busy; they wait inside "
            "the process with their request unread. Its accepted_queue_size answers 503 "
            "when full instead of leaving connections in the backlog, and wsgiwatch has "
            "proven no remedy for it yet."
        )
    if kind == "werkzeug":
        return (
            "The Werkzeug development server is not meant for production traffic: serve "
            "the app with a production server."
        )
    found = already_right(kind)
    if found is not None:
        return (
            f"{found} The waits seen here are inside a process that was already serving: "
            "look at what runs in it besides requests."
        )
    what = s.server or "this server"
    return (
        f"{what} accepts connections while its threads are busy, and wsgiwatch has proven "
        "no remedy for it: servers whose busy workers do not accept (gunicorn sync, uWSGI, "
        "mod_wsgi) leave waiting connections in the kernel backlog instead."
    )


def _proxy(s: Situation) -> list[Advice]:
    return [
        Advice(
            "Behind a proxy: its upstream read timeout (nginx proxy_read_timeout, default "
            "60 s) also runs while a request is queued inside a worker; keep it above your "
            f"slowest route plus the worst wait seen here ({s.worst_wait_s:.2f} s), or "
            "clients get 504s for requests that were only waiting."
        )
    ]


def _hook(s: Situation) -> list[Advice]:
    # Never what is in place already: a hook in some workers means the setup is done. It
    # is on by default on these servers (wsgiwatch.worker.autohook): off means the app
    # said accept_hook=False, or the server is a version the hook was not tested with.
    if s.accept_hook or s.deployment.family not in ("gunicorn", "waitress", "cheroot"):
        return []
    return [
        Advice(
            "The accept hook is off (it gives exact accept times, and waits too short for "
            "the kernel view): it is on by default with WSGIWatch(app) on gunicorn 27, "
            "waitress 3 and cheroot 11; remove accept_hook=False, or see the worker's "
            "worker.accept_hook_skipped log line for the server version it found."
        )
    ]


def advise(s: Situation, forecast: Forecast | None = None) -> list[Advice]:
    """Concrete changes, most useful first; empty when there is nothing to change."""
    out: list[Advice] = []
    kind = s.deployment.kind
    if s.blocking:
        out.append(Advice(_why(kind, s)))
        for remedy in remedies_for(s.deployment):
            out.append(
                Advice(
                    f"Remedy, proven on {kind}: {remedy.what}.",
                    flags=remedy.flags,
                    config=remedy.config,
                    cost=remedy.cost,
                    prediction=prediction_text(forecast, remedy),
                )
            )
        out += _proxy(s)
    elif s.backlog_mean_s is not None and s.backlog_mean_s > LONG_BACKLOG_S:
        out.append(
            Advice(
                f"Connections waited {s.backlog_mean_s * 1000:.0f} ms on average in the "
                "kernel backlog: that is the right place to wait, but it means every worker "
                "was busy. Add workers (or threads) if that wait matters."
            )
        )
    out += _hook(s)
    return out
