"""``wsgiwatch timeline``: from a real gunicorn gthread stall through the real sidecar to a
page that headless Chromium renders; then the page's details on fixture JSON."""

from __future__ import annotations

import contextlib
import copy
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

from support.fake_monitor import RECENT, FakeMonitor
from support.hol_scenario import WSGIWATCH, Stack, run_slow_then_fast, truly_blocked
from support.png_pixels import near, pixels
from support.servers import free_port

from wsgiwatch.cli.timeline_html import render_html
from wsgiwatch.sidecar.server import SidecarServer

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BLOCKED_RED = (0xE1, 0x57, 0x59)
MISROUTED_RED = (0xB0, 0x12, 0x2F)
BLOCKER_ORANGE = (0xF2, 0x8E, 0x2B)


def screenshot(page: Path, out: Path, profile: Path) -> bytes:
    """Headless Chromium's picture of ``page`` at 1400x900 (the README's size)."""
    assert CHROMIUM, "chromium is not installed (Debian package chromium; scripts/setup)"
    argv = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",  # as root, without it Chromium exits 0 and writes nothing
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        f"--screenshot={out}",
        "--window-size=1400,900",
        page.as_uri(),
    ]
    proc = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    try:
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:  # its renderer and helpers share its process group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate(timeout=10)
    assert proc.returncode == 0 and out.exists(), err.decode(errors="replace")[-2000:]
    return out.read_bytes()


def test_real_stall_rendered_in_chromium_links_victims_to_blockers(
    live: Stack, tmp_path: Path
) -> None:
    outcomes = run_slow_then_fast(live)
    page = tmp_path / "timeline.html"
    result = subprocess.run(
        [WSGIWATCH, "timeline", "--url", live.sidecar_url, "--since", "60s", "-o", str(page)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    recent = live.api("/api/requests?since=60")["requests"]
    blocked = [r for r in recent if r["blocked"]]
    assert len(blocked) == len(truly_blocked(outcomes)) > 0
    assert f"wrote {page}: {len(recent)} requests, {len(blocked)} blocked" in result.stderr

    html = page.read_text()
    for r in recent:
        assert f'id="req-{r["pid"]}-{r["request"]}"' in html
    for r in blocked:
        main = r["blockers"][0]
        assert main["route"] == "/slow/:id"
        target = f'href="#req-{main["pid"]}-{main["request"]}"'
        # The wait band, the line to the blocker and the table row all link to it.
        assert html.count(target) >= 3, target
        assert f'<a class="blocker-link" {target}>GET /slow/:id #{main["request"]}</a>' in html
        victim = f'id="req-{r["pid"]}-{r["request"]}" data-blockers="req-{main["pid"]}-'
        assert victim in html
    assert f"{len(blocked)} waited inside a busy worker behind another request" in html
    # Self-contained: nothing to fetch, every link inside the page.
    assert not re.search(r"<link|<img|src=|@import|url\(", html)
    assert set(re.findall(r'href="(.)', html)) == {"#"}

    png = screenshot(page, tmp_path / "timeline.png", tmp_path / "profile")
    width, height, colours = pixels(png)
    assert (width, height) == (1400, 900)
    white = colours.get((255, 255, 255), 0)
    assert len(colours) > 50, "a blank or nearly blank screenshot"
    assert white < 0.97 * width * height
    # Blocked waits (red, or dark red when misrouted) and the slow blockers (orange) show.
    assert near(colours, BLOCKED_RED) + near(colours, MISROUTED_RED) > 500
    assert near(colours, BLOCKER_ORANGE) > 2000


def test_unreachable_sidecar_exits_2(tmp_path: Path) -> None:
    out = tmp_path / "t.html"
    result = subprocess.run(
        [WSGIWATCH, "timeline", "--url", f"http://127.0.0.1:{free_port()}", "-o", str(out)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "cannot read the sidecar" in result.stderr
    assert not out.exists()


# -- fixture JSON ---------------------------------------------------------------------------


def recent(requests: list[dict[str, object]]) -> dict[str, object]:
    return {"now_ns": 10**10, "wall_offset_ns": 1_700_000_000 * 10**9, "requests": requests}


def test_fixture_page_links_the_victim_to_its_blocker() -> None:
    html = render_html(recent(copy.deepcopy(RECENT)), "fixture")
    assert 'id="req-4242-5"' in html and 'id="req-4242-6" data-blockers="req-4242-5"' in html
    assert '<a class="blocker-link" href="#req-4242-5">GET /slow #5</a> (500 ms)' in html
    assert 'class="run blocker"' in html  # the slow one is coloured as a blocker
    assert 'class="wait blocked"' in html
    assert "1 waited inside a busy worker behind another request</b> (500 ms of waiting)" in html
    assert "BLOCKED behind GET /slow (#5, 500 ms)" in html  # the tooltip
    assert "thread 4250" in html and "worker 0 · pid 4242" in html


def test_fixture_blocker_outside_the_window_and_misrouted() -> None:
    victim = copy.deepcopy(RECENT[1])
    victim["misrouted"] = True
    html = render_html(recent([victim]))
    assert "/slow (out of view)" in html
    assert 'class="wait blocked misrouted"' in html
    assert "misrouted: another worker was free" in html


def test_fixture_empty_window_and_escaping() -> None:
    assert "No finished requests in this window." in render_html(recent([]), "x")
    evil = copy.deepcopy(RECENT[0])
    evil["route"] = "/<script>alert(1)</script>"
    html = render_html(recent([evil]))
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)" in html


def test_fixture_many_overlapping_waits_stack_in_lanes() -> None:
    slow = copy.deepcopy(RECENT[0])
    waits = []
    for i in range(15):
        w = copy.deepcopy(RECENT[1])
        w.update(request=100 + i, ready_ns=8_100_000_000 + i * 10_000_000)
        waits.append(w)
    html = render_html(recent([slow, *waits]))
    lanes = {m for m in re.findall(r'class="wait blocked" x="[\d.]+" y="([\d.]+)"', html)}
    assert len(lanes) == 10  # capped: the rest overlap in the last lane


def test_stdout_output_from_a_sidecar_with_fixture_data() -> None:
    with SidecarServer(FakeMonitor(), port=0, poll_interval_s=0.1) as server:
        result = subprocess.run(
            [WSGIWATCH, "timeline", "--url", server.url, "--since", "1h", "-o", "-"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("<!DOCTYPE html>")
    assert f"{server.url}, last 3600 s" in result.stdout
    assert 'href="#req-4242-5"' in result.stdout


def test_unwritable_output_exits_1(tmp_path: Path) -> None:
    with SidecarServer(FakeMonitor(), port=0, poll_interval_s=0.1) as server:
        result = subprocess.run(
            [WSGIWATCH, "timeline", "--url", server.url, "-o", str(tmp_path / "no" / "t.html")],
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1
    assert "cannot write" in result.stderr and "No such file or directory" in result.stderr
