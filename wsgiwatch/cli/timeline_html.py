"""The timeline page: the drawing of :mod:`.timeline_svg` with its legend, a summary and a
table of the blocked requests, in one self-contained HTML file (inline SVG, CSS and a few
lines of JS; nothing fetched from anywhere)."""

from __future__ import annotations

import datetime
from typing import Any

from wsgiwatch.cli.common import seconds_text as _ms
from wsgiwatch.cli.timeline_svg import (
    Scale,
    draw,
    esc,
    req_id,
    rows_of,
    shown_blockers,
    start_ns,
    wall,
)
from wsgiwatch.sidecar.views import RecentRequests

MAX_TABLE_ROWS = 200

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


def _table(blocked: list[dict[str, Any]], offset: int, by_id: dict[str, Any]) -> str:
    if not blocked:
        return ""
    out = [
        "<h2 style='font-size:15px;margin:18px 0 0'>Blocked requests</h2><table><tr>"
        "<th>arrived</th><th>request</th><th>worker</th><th class=num>waited</th>"
        "<th>behind (click to show)</th><th></th></tr>"
    ]
    worst = sorted(blocked, key=lambda r: -float(r.get("wait_s") or 0))[:MAX_TABLE_ROWS]
    for r in sorted(worst, key=start_ns):
        links = []
        for b in shown_blockers(r):
            bid = req_id(b["pid"], b["request"])
            other = by_id.get(bid)
            name = f"{other['method']} {b['route']}" if other else f"{b['route']} (out of view)"
            links.append(
                f'<a class="blocker-link" href="#{bid}">{esc(name)} #{esc(b["request"])}</a> '
                f"({_ms(float(b.get('blamed_s') or 0))})"
            )
        out.append(
            f"<tr><td>{wall(start_ns(r), offset)}</td>"
            f'<td><a href="#{req_id(r["pid"], r["request"])}">{esc(r["method"])} '
            f"{esc(r['route'])}</a> #{esc(r['request'])}</td>"
            f"<td>{esc(r['worker'])} (pid {esc(r['pid'])})</td>"
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
        for b in shown_blockers(r):
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
            f"<div class=sub>{esc(source)}</div>"
            "<div class=empty>No finished requests in this window.</div></body></html>"
        )
        return "\n".join(head)
    t0 = min(min(start_ns(r) for r in requests), min(int(r["entry_ns"]) for r in requests))
    t1 = max(int(r["exit_ns"]) for r in requests)
    pad = max((t1 - t0) // 50, 1_000_000)
    scale = Scale(t0 - pad, t1 + pad)
    rows = rows_of(requests, int(min_wait_s * 1e9))
    for row in rows:
        for r in row.requests:
            r["_row"] = row  # where a victim's link finds its blocker (laid out by draw)
    svg = draw(rows, scale, offset, by_id)
    stamp = datetime.datetime.fromtimestamp((t1 + offset) / 1e9).strftime("%Y-%m-%d")
    head.append(
        f"<div class=sub>{esc(source)} · {stamp} {wall(t0, offset)} to {wall(t1, offset)} "
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
