"""``wsgiwatch timeline``: a waterfall of recent requests, one row per worker thread.

Each request is drawn where it ran: its wait inside the process (from accept, or from when
its bytes arrived, to the app's entry) as a thin band, its run (entry to the response's
``close()``) as a bar. Waits of blocked requests are red and link to the requests they
waited behind (``#req-PID-N``); a dashed line drops from the moment each arrived to its
blocker's bar. One self-contained HTML file: inline SVG, CSS and a few lines of JS, nothing
fetched from anywhere.
"""

from __future__ import annotations

import argparse
import datetime
import html
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from wsgiwatch.cli.client import SidecarClient, SidecarUnreachable
from wsgiwatch.cli.common import EXIT_UNREACHABLE, add_sidecar_options, duration_arg, sidecar_url
from wsgiwatch.cli.common import seconds_text as _ms
from wsgiwatch.sidecar.views import RecentRequests

LABEL_W = 200  # px, the row labels on the left
PLOT_W = 1100  # px, the time axis
AXIS_H = 40
GROUP_H = 24  # a worker's heading
RUN_H = 22  # a run bar
WAIT_H = 8  # one lane of wait bands
ROW_GAP = 10
MAX_WAIT_LANES = 10
MAX_TABLE_ROWS = 200
EXIT_WRITE_FAILED = 1
#: A co-blocker with less blame than this is not linked or coloured as a blocker.
MIN_BLAME_S = 0.005
_STEPS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300)

CSS = """
body{font:13px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:20px 24px;
color:#1d2330;background:#fff}
h1{font-size:19px;margin:0 0 4px}
.sub{color:#5b6475;margin-bottom:10px}
.summary b{color:#c62828}
.legend{display:flex;flex-wrap:wrap;gap:6px 20px;margin:8px 0 12px;color:#3a4252}
.legend span{display:inline-flex;align-items:center;gap:6px;white-space:nowrap}
.sw{display:inline-block;width:22px;height:10px;border-radius:2px}
.chart{overflow-x:auto;border:1px solid #e3e6ec;border-radius:6px;padding:6px 0}
svg text{font:12px system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;fill:#3a4252}
svg .grp{font-weight:600;fill:#1d2330}
svg .tick{fill:#7a8394}
.grid{stroke:#eef0f4}
.band{fill:#f7f8fa}
.run{fill:#4c78a8}
.run.blocker{fill:#f28e2b}
.run.failed{fill:#9d755d}
.wait{fill:#c9ced6}
.wait.blocked{fill:#e15759}
.wait.misrouted{fill:#b0122f}
.acc{stroke:#1d2330;stroke-width:1.5}
.link{stroke:#e15759;stroke-width:1;stroke-dasharray:3 2}
.lbl{fill:#fff;font-size:11.5px;font-weight:600;pointer-events:none}
g.req:target .run,g.req.hl .run{stroke:#111;stroke-width:2}
g.req:target .run{fill:#d62728}
table{border-collapse:collapse;margin-top:14px;font-size:12px}
th,td{text-align:left;padding:3px 10px;border-bottom:1px solid #eef0f4}
th{color:#5b6475;font-weight:600}
td.num{text-align:right;font-variant-numeric:tabular-nums}
a{color:#1f5fae}
.empty{padding:40px;color:#5b6475}
"""

JS = """
document.querySelectorAll('[data-blockers]').forEach(function(el){
  var ids=el.getAttribute('data-blockers').split(' ');
  function set(on){ids.forEach(function(id){var b=document.getElementById(id);
    if(b){b.classList.toggle('hl',on);}});}
  el.addEventListener('mouseenter',function(){set(true);});
  el.addEventListener('mouseleave',function(){set(false);});
});
"""


def _shown_blockers(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The main blocker, and co-blockers that carry some of the blame (not a queued
    request that started a millisecond ahead)."""
    blockers: list[dict[str, Any]] = r.get("blockers") or []
    return [b for i, b in enumerate(blockers) if i == 0 or float(b["blamed_s"]) >= MIN_BLAME_S]


def req_id(pid: Any, request: Any) -> str:
    return f"req-{pid}-{request}"


def _e(text: Any) -> str:
    return html.escape(str(text), quote=True)


@dataclass
class _Row:
    worker: int
    pid: int
    tid: int
    requests: list[dict[str, Any]] = field(default_factory=list)
    lanes: list[int] = field(default_factory=list)  # end (ns) of the last wait in each lane
    lane_of: dict[int, int] = field(default_factory=dict)  # id(request) -> lane
    y: float = 0.0

    @property
    def height(self) -> float:
        return RUN_H + WAIT_H * len(self.lanes) + ROW_GAP


def _start(r: dict[str, Any]) -> int:
    return int(r.get("ready_ns") or r["entry_ns"])


def _rows(requests: list[dict[str, Any]], min_wait_ns: int) -> list[_Row]:
    rows: dict[tuple[int, int, int], _Row] = {}
    for r in sorted(requests, key=_start):
        key = (int(r["worker"]), int(r["pid"]), int(r.get("tid") or 0))
        row = rows.setdefault(key, _Row(*key))
        row.requests.append(r)
        start, entry = _start(r), int(r["entry_ns"])
        if entry - start < min_wait_ns and not r.get("blocked"):
            continue
        free = [i for i, end in enumerate(row.lanes) if end <= start]
        if free:
            lane = free[0]
        else:  # a new lane, or past the cap, overlap in the last one
            lane = min(len(row.lanes), MAX_WAIT_LANES - 1)
            if lane == len(row.lanes):
                row.lanes.append(0)
        row.lanes[lane] = max(row.lanes[lane], entry)
        row.lane_of[id(r)] = lane
    return [rows[k] for k in sorted(rows)]


def _step(span_s: float) -> float:
    for step in _STEPS:
        if span_s / step <= 12:
            return step
    return 600.0


class _Scale:
    def __init__(self, t0: int, t1: int) -> None:
        self.t0 = t0
        self.span = max(t1 - t0, 1_000_000)

    def x(self, ns: int) -> float:
        return LABEL_W + (ns - self.t0) / self.span * PLOT_W

    def w(self, a: int, b: int, minimum: float = 2.5) -> float:
        return max(minimum, (b - a) / self.span * PLOT_W)


def _wall(ns: int, offset: int) -> str:
    moment = datetime.datetime.fromtimestamp((ns + offset) / 1e9)
    return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def _tooltip(r: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> str:
    run_s = (int(r["exit_ns"]) - int(r["entry_ns"])) / 1e9
    text = f"{r['method']} {r['route']} → {r['status']} · ran {_ms(run_s)}"
    if r.get("wait_s") is not None:
        text += f" · waited {_ms(float(r['wait_s']))} ({r.get('wait_source')})"
    if r.get("blocked"):
        names = []
        for b in _shown_blockers(r):
            other = by_id.get(req_id(b["pid"], b["request"]))
            method = f"{other['method']} " if other else ""
            names.append(f"{method}{b['route']} (#{b['request']}, {_ms(float(b['blamed_s']))})")
        text += " · BLOCKED behind " + ", ".join(names)
    if r.get("misrouted"):
        text += " · misrouted: another worker had a free slot"
    return text + f" · peer {r.get('peer')} · pid {r['pid']} #{r['request']}"


def _svg(rows: list[_Row], scale: _Scale, offset: int, by_id: dict[str, dict[str, Any]]) -> str:
    """Lays every row out first (their ``y``), then draws, so links can find any row."""
    parts: list[str] = []
    y: float = AXIS_H
    layout: list[tuple[str, float, _Row | None]] = []
    last_worker: tuple[int, int] | None = None
    for row in rows:
        if (row.worker, row.pid) != last_worker:
            last_worker = (row.worker, row.pid)
            layout.append((f"worker {row.worker} · pid {row.pid}", y, None))
            y += GROUP_H
        row.y = y
        layout.append(("", y, row))
        y += row.height
    height = int(y + 10)
    width = LABEL_W + PLOT_W + 20
    parts.append(
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="request timeline">'
    )
    # Time axis and grid.
    step_ns = int(_step(scale.span / 1e9) * 1e9)
    t = 0
    while t <= scale.span:
        x = scale.x(scale.t0 + t)
        parts.append(
            f'<line class="grid" x1="{x:.1f}" y1="{AXIS_H - 6}" x2="{x:.1f}" y2="{height}"/>'
        )
        label = _wall(scale.t0, offset) if t == 0 else f"+{t / 1e9:g} s"
        anchor = "start" if t == 0 else "middle"
        parts.append(
            f'<text class="tick" x="{x:.1f}" y="{AXIS_H - 12}" text-anchor="{anchor}">'
            f"{_e(label)}</text>"
        )
        t += step_ns
    for label, ly, laid in layout:
        if laid is None:
            parts.append(f'<text class="grp" x="8" y="{ly + 15}">{_e(label)}</text>')
            parts.append(f'<line class="grid" x1="0" y1="{ly + 2}" x2="{width}" y2="{ly + 2}"/>')
            continue
        parts.append(
            f'<rect class="band" x="{LABEL_W}" y="{ly}" width="{PLOT_W}" '
            f'height="{laid.height - ROW_GAP}"/>'
        )
        parts.append(f'<text x="20" y="{ly + 15}">thread {laid.tid}</text>')
    # Bars, then the blocker links on top.
    links: list[str] = []
    for row in rows:
        for r in row.requests:
            parts.append(_request(r, row, scale, by_id, links))
    parts += links
    parts.append("</svg>")
    return "\n".join(parts)


def _request(
    r: dict[str, Any],
    row: _Row,
    scale: _Scale,
    by_id: dict[str, dict[str, Any]],
    links: list[str],
) -> str:
    rid = req_id(r["pid"], r["request"])
    entry, exit_ = int(r["entry_ns"]), int(r["exit_ns"])
    start = _start(r)
    blockers = [req_id(b["pid"], b["request"]) for b in _shown_blockers(r)]
    classes = ["run"]
    if r.get("_blocks"):
        classes.append("blocker")
    if int(r.get("status") or 0) >= 500:
        classes.append("failed")
    data = f' data-blockers="{_e(" ".join(blockers))}"' if blockers else ""
    out = [f'<g class="req" id="{rid}"{data}><title>{_e(_tooltip(r, by_id))}</title>']
    x, w = scale.x(entry), scale.w(entry, exit_)
    out.append(
        f'<rect class="{" ".join(classes)}" x="{x:.1f}" y="{row.y:.1f}" width="{w:.1f}" '
        f'height="{RUN_H}" rx="2"/>'
    )
    if w > 70:
        out.append(
            f'<text class="lbl" x="{x + 5:.1f}" y="{row.y + 15:.1f}">'
            f"{_e(r['method'])} {_e(r['route'])}</text>"
        )
    lane = row.lane_of.get(id(r))
    if lane is not None:
        wy = row.y + RUN_H + 1 + lane * WAIT_H
        kind = "wait"
        if r.get("blocked"):
            kind += " blocked misrouted" if r.get("misrouted") else " blocked"
        band = (
            f'<rect class="{kind}" x="{scale.x(start):.1f}" y="{wy:.1f}" '
            f'width="{scale.w(start, entry):.1f}" height="{WAIT_H - 1}"/>'
        )
        if blockers:
            band = f'<a href="#{blockers[0]}">{band}</a>'
            target = by_id.get(blockers[0])
            target_row: _Row | None = target.get("_row") if target else None
            if target_row is not None:
                lx = scale.x(start)
                links.append(
                    f'<a href="#{blockers[0]}"><line class="link" x1="{lx:.1f}" y1="{wy:.1f}" '
                    f'x2="{lx:.1f}" y2="{target_row.y + RUN_H / 2:.1f}"/></a>'
                )
        out.append(band)
    accept = r.get("accept_ns")
    if accept and scale.t0 <= accept <= entry:
        ax = scale.x(int(accept))
        out.append(
            f'<line class="acc" x1="{ax:.1f}" y1="{row.y + RUN_H - 5:.1f}" x2="{ax:.1f}" '
            f'y2="{row.y + RUN_H + 3:.1f}"/>'
        )
    out.append("</g>")
    return "".join(out)


def _table(blocked: list[dict[str, Any]], offset: int, by_id: dict[str, Any]) -> str:
    if not blocked:
        return ""
    out = [
        "<h2 style='font-size:15px;margin:18px 0 0'>Blocked requests</h2><table><tr>"
        "<th>arrived</th><th>request</th><th>worker</th><th class=num>waited</th>"
        "<th>behind (click to show)</th><th></th></tr>"
    ]
    worst = sorted(blocked, key=lambda r: -float(r.get("wait_s") or 0))[:MAX_TABLE_ROWS]
    for r in sorted(worst, key=_start):
        links = []
        for b in _shown_blockers(r):
            bid = req_id(b["pid"], b["request"])
            other = by_id.get(bid)
            name = f"{other['method']} {b['route']}" if other else f"{b['route']} (out of view)"
            links.append(
                f'<a class="blocker-link" href="#{bid}">{_e(name)} #{_e(b["request"])}</a> '
                f"({_ms(float(b.get('blamed_s') or 0))})"
            )
        out.append(
            f"<tr><td>{_wall(_start(r), offset)}</td>"
            f'<td><a href="#{req_id(r["pid"], r["request"])}">{_e(r["method"])} '
            f"{_e(r['route'])}</a> #{_e(r['request'])}</td>"
            f"<td>{_e(r['worker'])} (pid {_e(r['pid'])})</td>"
            f"<td class=num>{_ms(float(r.get('wait_s') or 0))}</td>"
            f"<td>{', '.join(links)}</td>"
            f"<td>{'misrouted: another worker was free' if r.get('misrouted') else ''}</td></tr>"
        )
    out.append("</table>")
    return "\n".join(out)


def render_html(recent: RecentRequests, source: str = "", min_wait_s: float = 0.001) -> str:
    """The timeline page for an ``/api/requests`` answer (``monitor.recent_requests()``)."""
    offset = int(recent.get("wall_offset_ns") or 0)
    requests: list[dict[str, Any]] = [dict(r) for r in recent.get("requests", [])]
    by_id = {req_id(r["pid"], r["request"]): r for r in requests}
    for r in requests:
        for b in _shown_blockers(r):
            other = by_id.get(req_id(b["pid"], b["request"]))
            if other is not None:
                other["_blocks"] = True
    blocked = [r for r in requests if r.get("blocked")]
    misrouted = sum(1 for r in blocked if r.get("misrouted"))
    waited = sum(float(r.get("wait_s") or 0) for r in blocked)
    head = [
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>",
        "<title>wsgiwatch timeline</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>wsgiwatch timeline</h1>",
    ]
    if not requests:
        head.append(
            f"<div class=sub>{_e(source)}</div>"
            "<div class=empty>No finished requests in this window.</div></body></html>"
        )
        return "\n".join(head)
    t0 = min(min(_start(r) for r in requests), min(int(r["entry_ns"]) for r in requests))
    t1 = max(int(r["exit_ns"]) for r in requests)
    pad = max((t1 - t0) // 50, 1_000_000)
    scale = _Scale(t0 - pad, t1 + pad)
    rows = _rows(requests, int(min_wait_s * 1e9))
    for row in rows:
        for r in row.requests:
            r["_row"] = row  # where a victim's link finds its blocker (laid out by _svg)
    svg = _svg(rows, scale, offset, by_id)
    stamp = datetime.datetime.fromtimestamp((t1 + offset) / 1e9).strftime("%Y-%m-%d")
    head.append(
        f"<div class=sub>{_e(source)} · {stamp} {_wall(t0, offset)} to {_wall(t1, offset)} "
        f"({_ms((t1 - t0) / 1e9)})</div>"
    )
    summary = f"{len(requests)} requests"
    if blocked:
        summary += (
            f" · <b>{len(blocked)} waited inside a busy worker behind another request</b> "
            f"({_ms(waited)} of waiting)"
        )
        if misrouted:
            summary += f" · {misrouted} misrouted (another worker had a free slot)"
    else:
        summary += " · none waited behind another request"
    head.append(f"<div class=summary>{summary}</div>")
    head.append(
        "<div class=legend>"
        "<span><i class=sw style='background:#4c78a8'></i>running</span>"
        "<span><i class=sw style='background:#f28e2b'></i>running, blocking others</span>"
        "<span><i class=sw style='background:#c9ced6;height:6px'></i>waiting in the "
        "process</span>"
        "<span><i class=sw style='background:#e15759;height:6px'></i>blocked behind another "
        "request (dashed: to its blocker)</span>"
        "<span><i class=sw style='background:#b0122f;height:6px'></i>blocked while another "
        "worker was free</span>"
        "<span><i class=sw style='background:#1d2330;width:2px'></i>accept</span>"
        "</div>"
    )
    body = [f"<div class=chart>{svg}</div>", _table(blocked, offset, by_id)]
    return "\n".join([*head, *body, f"<script>{JS}</script></body></html>"])


# -- the command -----------------------------------------------------------------------------


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "timeline",
        help="write a waterfall of recent requests per worker thread, stalls linked to "
        "their blockers, as one HTML file",
        description="Read a running sidecar's recent requests and write a self-contained "
        "HTML page: one row per worker thread, each request's accept, wait and run; "
        "requests that waited behind others in red, linked to the requests they waited "
        "behind. Exit status: 0 written, 1 the file could not be written, 2 the sidecar "
        "could not be read.",
    )
    add_sidecar_options(parser, timeout_s=5.0)
    parser.add_argument(
        "--since",
        default="60s",
        type=duration_arg,
        help="how far back: 30s, 5m (default 60s)",
    )
    parser.add_argument(
        "-o",
        "--output",
        default="timeline.html",
        help="where to write (default timeline.html; - for standard output)",
    )
    parser.set_defaults(handler=command)


def write(page: str, output: str) -> None:
    if output == "-":
        sys.stdout.write(page)
        return
    tmp = f"{output}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(page)
    os.replace(tmp, output)


def command(args: argparse.Namespace, environ: Mapping[str, str]) -> int:
    url = sidecar_url(args, environ)
    try:
        client = SidecarClient(url, args.timeout)
        recent = client.recent_requests(args.since)
    except (SidecarUnreachable, ValueError) as exc:
        print(f"wsgiwatch timeline: cannot read the sidecar: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    page = render_html(recent, f"{client.url}, last {args.since:g} s")
    try:
        write(page, args.output)
    except OSError as exc:
        print(f"wsgiwatch timeline: cannot write {args.output}: {exc}", file=sys.stderr)
        return EXIT_WRITE_FAILED
    if args.output != "-":
        blocked = sum(1 for r in recent["requests"] if r.get("blocked"))
        print(
            f"wrote {args.output}: {len(recent['requests'])} requests, {blocked} blocked",
            file=sys.stderr,
        )
    return 0
