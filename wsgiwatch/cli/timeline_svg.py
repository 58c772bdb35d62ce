"""The timeline's drawing: one SVG row per worker thread, each request where it ran.

A request's wait inside the process (from accept, or from when its bytes arrived, to the
app's entry) is a thin band in a lane under its thread's row; its run (entry to the
response's ``close()``) is a bar. Waits of blocked requests are red and link to the
requests they waited behind (``#req-PID-N``); a dashed line drops from the moment each
arrived to its blocker's bar. :mod:`.timeline_html` puts it in a page.
"""

from __future__ import annotations

import datetime
import html
from dataclasses import dataclass, field
from typing import Any

from wsgiwatch.cli.common import seconds_text as _ms

LABEL_W = 200  # px, the row labels on the left
PLOT_W = 1100  # px, the time axis
AXIS_H = 40
GROUP_H = 24  # a worker's heading
RUN_H = 22  # a run bar
WAIT_H = 8  # one lane of wait bands
ROW_GAP = 10
MAX_WAIT_LANES = 10
#: A co-blocker with less blame than this is not linked or coloured as a blocker.
MIN_BLAME_S = 0.005
_STEPS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 15, 30, 60, 120, 300)


def shown_blockers(r: dict[str, Any]) -> list[dict[str, Any]]:
    """The main blocker, and co-blockers that carry some of the blame (not a queued
    request that started a millisecond ahead)."""
    blockers: list[dict[str, Any]] = r.get("blockers") or []
    return [b for i, b in enumerate(blockers) if i == 0 or float(b["blamed_s"]) >= MIN_BLAME_S]


def req_id(pid: Any, request: Any) -> str:
    return f"req-{pid}-{request}"


def esc(text: Any) -> str:
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


def start_ns(r: dict[str, Any]) -> int:
    return int(r.get("ready_ns") or r["entry_ns"])


def rows_of(requests: list[dict[str, Any]], min_wait_ns: int) -> list[_Row]:
    rows: dict[tuple[int, int, int], _Row] = {}
    for r in sorted(requests, key=start_ns):
        key = (int(r["worker"]), int(r["pid"]), int(r.get("tid") or 0))
        row = rows.setdefault(key, _Row(*key))
        row.requests.append(r)
        start, entry = start_ns(r), int(r["entry_ns"])
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


class Scale:
    def __init__(self, t0: int, t1: int) -> None:
        self.t0 = t0
        self.span = max(t1 - t0, 1_000_000)

    def x(self, ns: int) -> float:
        return LABEL_W + (ns - self.t0) / self.span * PLOT_W

    def w(self, a: int, b: int, minimum: float = 2.5) -> float:
        return max(minimum, (b - a) / self.span * PLOT_W)


def wall(ns: int, offset: int) -> str:
    moment = datetime.datetime.fromtimestamp((ns + offset) / 1e9)
    return moment.strftime("%H:%M:%S.") + f"{moment.microsecond // 1000:03d}"


def _tooltip(r: dict[str, Any], by_id: dict[str, dict[str, Any]]) -> str:
    run_s = (int(r["exit_ns"]) - int(r["entry_ns"])) / 1e9
    text = f"{r['method']} {r['route']} → {r['status']} · ran {_ms(run_s)}"
    if r.get("wait_s") is not None:
        text += f" · waited {_ms(float(r['wait_s']))} ({r.get('wait_source')})"
    if r.get("blocked"):
        names = []
        for b in shown_blockers(r):
            other = by_id.get(req_id(b["pid"], b["request"]))
            method = f"{other['method']} " if other else ""
            names.append(f"{method}{b['route']} (#{b['request']}, {_ms(float(b['blamed_s']))})")
        text += " · BLOCKED behind " + ", ".join(names)
    if r.get("misrouted"):
        text += " · misrouted: another worker had a free slot"
    return text + f" · peer {r.get('peer')} · pid {r['pid']} #{r['request']}"


def draw(rows: list[_Row], scale: Scale, offset: int, by_id: dict[str, dict[str, Any]]) -> str:
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
        label = wall(scale.t0, offset) if t == 0 else f"+{t / 1e9:g} s"
        anchor = "start" if t == 0 else "middle"
        parts.append(
            f'<text class="tick" x="{x:.1f}" y="{AXIS_H - 12}" text-anchor="{anchor}">'
            f"{esc(label)}</text>"
        )
        t += step_ns
    for label, ly, laid in layout:
        if laid is None:
            parts.append(f'<text class="grp" x="8" y="{ly + 15}">{esc(label)}</text>')
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
    scale: Scale,
    by_id: dict[str, dict[str, Any]],
    links: list[str],
) -> str:
    rid = req_id(r["pid"], r["request"])
    entry, exit_ = int(r["entry_ns"]), int(r["exit_ns"])
    start = start_ns(r)
    blockers = [req_id(b["pid"], b["request"]) for b in shown_blockers(r)]
    classes = ["run"]
    if r.get("_blocks"):
        classes.append("blocker")
    if int(r.get("status") or 0) >= 500:
        classes.append("failed")
    data = f' data-blockers="{esc(" ".join(blockers))}"' if blockers else ""
    out = [f'<g class="req" id="{rid}"{data}><title>{esc(_tooltip(r, by_id))}</title>']
    x, w = scale.x(entry), scale.w(entry, exit_)
    out.append(
        f'<rect class="{" ".join(classes)}" x="{x:.1f}" y="{row.y:.1f}" width="{w:.1f}" '
        f'height="{RUN_H}" rx="2"/>'
    )
    if w > 70:
        out.append(
            f'<text class="lbl" x="{x + 5:.1f}" y="{row.y + 15:.1f}">'
            f"{esc(r['method'])} {esc(r['route'])}</text>"
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
