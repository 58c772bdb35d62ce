"""A :class:`~wsgiwatch.cli.diagnosis.Diagnosis` in plain words: what ``wsgiwatch
diagnose`` prints.

Only wording lives here: every figure comes from the diagnosis, every remedy from
:mod:`.advice`. Figures measured elsewhere (what the C accelerator saves, what a remedy did
in a benchmark) are in the docs, not in this text.
"""

from __future__ import annotations

from wsgiwatch.cli.advice import Advice
from wsgiwatch.cli.common import paragraph as _para
from wsgiwatch.cli.common import plural as _plural
from wsgiwatch.cli.common import seconds_text as _s
from wsgiwatch.cli.common import window_text as _window
from wsgiwatch.cli.diagnosis import Diagnosis
from wsgiwatch.sidecar.views import RECENT_KEPT


def notes(d: Diagnosis) -> list[str]:
    """What limits the diagnosis: blind spots and lost data, each said once."""
    out = []
    if d.window_cut:
        out.append(
            f"The sidecar keeps the last {RECENT_KEPT} requests: the window is shorter than "
            "asked for."
        )
    if d.requests and not d.timed:
        how = (
            "the accept hook is on, yet no request was matched to its accept: check that "
            "the middleware and the hook write to the same spool directory"
            if d.accept_hook
            else "turn on the accept hook, or run the sidecar where it can read the "
            "workers' sockets (same user, same network namespace)"
        )
        out.append(
            "No request had a known accept or arrival time, so queue waits could not be "
            f"measured: {how}."
        )
    if d.pure_python_workers:
        n = d.pure_python_workers
        why = (
            # The C path serves the main interpreter only; mod_wsgi puts each application
            # group in a sub-interpreter of its own.
            "mod_wsgi runs the app in a sub-interpreter, which the C accelerator does not "
            "serve (WSGIApplicationGroup %{GLOBAL} runs it in the main one), or the "
            "accelerator is not built there, or WSGIWATCH_PURE_PYTHON is set"
            if "mod_wsgi" in d.server
            else "wsgiwatch's C accelerator is not built there (no C compiler at install "
            "time) or WSGIWATCH_PURE_PYTHON is set"
        )
        out.append(
            f"{_plural(n, 'worker')} record{'s' if n == 1 else ''} in pure Python: {why}. "
            "Recording then costs several times more per request (docs/benchmarks.md)."
        )
    if not d.kernel_visible:
        out.append(
            "The sidecar cannot read the kernel's socket tables here: live stalls and "
            "backlogs are seen only through the accept hook."
        )
    reasons: dict[tuple[str, str], list[int]] = {}
    for unseen in d.unseen_workers:
        reasons.setdefault((unseen["reason"], unseen["remedy"]), []).append(unseen["worker"])
    for (reason, remedy), indexes in sorted(reasons.items()):
        names = ", ".join(str(i) for i in sorted(indexes))
        out.append(
            f"The sidecar cannot see the sockets of {_plural(len(indexes), 'worker')} "
            f"({names}; {reason.replace('_', ' ')}): their stalls and backlog go unseen. "
            f"To see them: {remedy}."
        )
    if d.records_dropped:
        out.append(
            f"{d.records_dropped} request records were dropped before the sidecar read "
            "them: these figures undercount."
        )
    return out


def _headline(d: Diagnosis) -> str:
    if d.verdict == "idle":
        return _para(
            f"No finished requests in the last {_window(d.window_s)}: nothing to judge yet. "
            f"The sidecar sees {_plural(d.workers_live, 'live worker')}; if that is 0, "
            "check that the app is wrapped with WSGIWatch and writes to the spool "
            "directory the sidecar reads."
        )
    if d.blocked:
        share = d.blocked / d.requests if d.requests else 0.0
        return _para(
            f"HEAD-OF-LINE BLOCKING: {d.blocked} of {d.requests} requests ({share:.1%}) "
            f"waited inside a busy worker behind another request: {_s(d.blocked_wait_s)} "
            f"of waiting in all, longest {_s(d.worst_wait_s)}, median "
            f"{_s(d.median_wait_s)}."
        )
    if d.stalls_now:
        return _para(
            f"HEAD-OF-LINE BLOCKING right now: {_plural(d.stalls_now, 'request')} "
            f"stalled inside busy workers (oldest {_s(d.oldest_stall_s)}); none of the "
            f"{d.requests} requests finished in the window was blocked."
        )
    return _para(
        f"HEALTHY: none of the {d.requests} requests of the last "
        f"{_window(d.window_s)} waited inside a busy worker behind another request."
    )


def _hook_state(d: Diagnosis) -> str:
    if d.accept_hook:
        return "on"
    if d.hook_workers:
        return f"on in {d.hook_workers} of {d.workers_live} workers"
    return "off"


def _who_blocked(d: Diagnosis) -> list[str]:
    out: list[str] = []
    if d.blocking_routes:
        out += ["", "Blocking routes (what they waited behind):"]
        for b in d.blocking_routes[:8]:
            out.append(
                f"  {b.route:<28} {_plural(b.blocked, 'request'):>13} blocked, "
                f"{_s(b.blamed_s):>9} of their waiting"
            )
    if d.waiting_routes:
        waiting = ", ".join(f"{route} ({n})" for route, n in d.waiting_routes[:6])
        out.append(_para(f"Routes that waited: {waiting}.", "  "))
    if d.example:
        e = d.example
        out.append(
            _para(
                f"Worst: {e['method']} {e['route']} waited {_s(e['wait_s'] or 0)} in worker "
                f"{e['worker']} (pid {e['pid']}) behind {e['blocker_route']}"
                + (", while another worker had a free slot." if e["misrouted"] else "."),
                "  ",
            )
        )
    blocked_workers = [w for w in d.workers if w.blocked]
    if blocked_workers:
        out += ["", "Workers where requests waited:"]
        for w in blocked_workers:
            out.append(
                f"  worker {w.worker} (pid {w.pid}): {w.blocked} of {w.requests} requests "
                f"blocked, {_s(w.blocked_wait_s)} of waiting"
            )
    if d.misrouted:
        out.append(
            _para(
                f"{d.misrouted} of the {d.blocked} blocked requests waited while another "
                "worker of the same server had a free slot (misrouted): a worker that could "
                "not serve them accepted them anyway.",
                "  ",
            )
        )
    return out


def _wait_sources(d: Diagnosis) -> list[str]:
    """Per worker, where its queue waits came from: the accept hook (exact), mod_wsgi's
    keys, the kernel's view (within a few ms, and only for waits a poll saw), a proxy's
    header (an upper bound), or nowhere."""
    lines = []
    for w in d.workers:
        if w.wait_sources:
            counts = sorted(w.wait_sources.items(), key=lambda kv: (-kv[1], kv[0]))
            text = ", ".join(f"{source} {n}" for source, n in counts)
            lines.append(f"  worker {w.worker} (pid {w.pid}): {text}")
    return ["", "Where the queue waits come from, per worker (requests):", *lines] if lines else []


def _where_waited(d: Diagnosis) -> list[str]:
    out = ["", "Where requests waited:"]
    out.append(
        f"  inside busy worker processes: {_s(d.process_wait_s)} over the window"
        + (" (the problem)" if d.blocked else "")
    )
    if d.backlog_wait_s is not None:
        out.append(
            _para(
                f"in the kernel accept backlog: {_s(d.backlog_wait_s)} over "
                f"{_plural(d.backlog_waits, 'connection')} since the sidecar started "
                "(healthy: the next free worker takes them)",
                "  ",
            )
        )
    elif d.accept_hook:
        out.append("  in the kernel accept backlog: no connection waited there")
    else:
        out.append("  in the kernel accept backlog: not measured (the accept hook measures it)")
    for listener in d.backlog_now:
        out.append(
            f"  backlog now on {listener['listener']}: {listener['backlog']} of {listener['limit']}"
        )
    if d.stalls_now and d.blocked:
        out.append(
            f"  stalled right now: {_plural(d.stalls_now, 'request')}, oldest "
            f"{_s(d.oldest_stall_s)}"
        )
    out += _wait_sources(d)
    if d.imbalance:
        shares = ", ".join(f"worker {w} {n} ({share:.0%})" for w, n, share in d.imbalance)
        fair = 1 / len(d.imbalance)
        out += [
            "",
            _para(
                f"Accept imbalance: connections per worker in the window: {shares}; an even "
                f"share would be {fair:.0%}. Workers that accept greedily race for new "
                "connections, and the winner is not the least busy one."
            ),
        ]
    return out


def _advice(a: Advice) -> list[str]:
    """A bullet, then for a remedy exactly what to change (``add:`` is what to type)."""
    out = [_para(a.text, "  ", "- ")]
    for label, value in (
        ("add", a.flags),
        ("or in the config file", a.config),
        ("predicted", a.prediction),
        ("cost", a.cost),
    ):
        if value:
            out.append(_para(f"{label}: {value}", "      ", ""))
    return out


def render(d: Diagnosis, advice: list[Advice], source: str = "") -> str:
    """The whole report: verdict, who blocked whom, where waiting happened, what to change
    (``advice``, most useful first), and what limits these figures."""
    head = f"wsgiwatch diagnose{': ' + source if source else ''}, last {_window(d.window_s)}"
    if d.workers_live:
        server = f" of {d.server}" if d.server else ""
        head += (
            f" ({_plural(d.workers_live, 'worker')}{server}, {_plural(d.capacity, 'slot')} "
            f"each, accept hook {_hook_state(d)})"
        )
    out = [head, "", _headline(d)]
    if d.verdict != "idle":
        out += _who_blocked(d)
        out += _where_waited(d)
    if advice:
        out += ["", "What to change:"]
        for a in advice:
            out += _advice(a)
    found = notes(d)
    if found:
        out += ["", "Notes:"]
        out += [_para(n, "  ", "- ") for n in found]
    return "\n".join(out) + "\n"
