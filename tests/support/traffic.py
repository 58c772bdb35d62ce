"""Seeded open-loop traffic against a real server, and per-request scoring of the
sidecar's verdicts against the clients' own truth.

**Traffic.** Arrivals are a Poisson process (exponential gaps, seeded), sent at their
planned times whatever the server does (open loop: a slow server does not slow the
arrivals, as with real users). A share of the requests is slow (uniform in a range of
milliseconds), the rest take a few milliseconds. Each request goes on a fresh connection or
on a kept-alive one from a small pool of persistent ``http.client`` connections (the most
recently idle first, as browsers and proxies reuse them). Counts and times are bounded.

**Truth.** The app (``apps.accuracy``) stamps its entry and exit (CLOCK_MONOTONIC, one
clock for every process here), its pid, and the accept time of the connection
(``support.truth_accept``) in response headers; the client keeps the time it sent the
request and its own port. A request's *ready* time is max(accept, send): on a fresh
connection the accept (the kernel backlog comes before it and is not the process's doing),
on a kept-alive one the send. Its *in-process wait* is entry - ready. It was **blocked**
when, during that wait, its worker ran at capacity (requests running there >= capacity)
for longer than the threshold: the definition of DESIGN.md, computed from every request's
own entry and exit. Requests within ``band`` of the threshold either way are left out of
recall and precision (neither side can be expected to call them the same).

**Scoring.** Each request is matched to the sidecar's record of it (``/api/requests``) by
worker pid, client port and entry time. Recall: truly blocked requests the sidecar called
blocked. Precision: requests the sidecar called blocked that truly were. Wait error: the
sidecar's queue wait minus the true in-process wait, over the truly blocked requests it
measured.
"""

from __future__ import annotations

import http.client
import random
import statistics
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

Kind = Literal["fresh", "kept"]
#: How far apart the app's entry stamp and the middleware's may be, to match records
#: (the nearest wins; a loaded machine can switch threads between the two).
MATCH_NS = 50_000_000


@dataclass(frozen=True)
class Shape:
    """What traffic to send: length, and the mix of requests and connections (the rate
    is the server's: see ``plan``)."""

    duration_s: float = 10.0
    slow_share: float = 0.12
    slow_ms: tuple[int, int] = (120, 800)
    fast_ms: int = 3
    kept_share: float = 0.5  # share of requests sent on kept-alive connections
    seed: int = 1


@dataclass
class Shot:
    """One planned request and what its client saw."""

    index: int
    at_s: float  # planned send time, from the start of the run
    kind: Kind
    work_ms: int
    port: int = 0
    send_ns: int = 0
    done_ns: int = 0
    entry_ns: int = 0
    exit_ns: int = 0
    accept_ns: int = 0
    pid: int = 0
    status: int = 0
    error: str = ""

    @property
    def ready_ns(self) -> int:
        return max(self.accept_ns, self.send_ns)

    @property
    def wait_ns(self) -> int:
        return self.entry_ns - self.ready_ns


def plan(shape: Shape, rate: float) -> list[Shot]:
    """The requests to send, at ``rate`` per second on average (Poisson arrivals)."""
    rng = random.Random(shape.seed)
    shots: list[Shot] = []
    at = rng.expovariate(rate)
    while at < shape.duration_s:
        slow = rng.random() < shape.slow_share
        work = rng.randint(*shape.slow_ms) if slow else shape.fast_ms
        kind: Kind = "kept" if rng.random() < shape.kept_share else "fresh"
        shots.append(Shot(len(shots), at, kind, work))
        at += rng.expovariate(rate)
    return shots


class _Pool:
    """Idle kept-alive connections, the most recently used first."""

    def __init__(self, port: int, timeout: float, keep: int = 8) -> None:
        self.port, self.timeout, self.keep = port, timeout, keep
        self.idle: list[http.client.HTTPConnection] = []
        self.lock = threading.Lock()

    def take(self) -> tuple[http.client.HTTPConnection, bool]:
        with self.lock:
            if self.idle:
                return self.idle.pop(), True
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=self.timeout)
        conn.connect()
        return conn, False

    def give(self, conn: http.client.HTTPConnection) -> None:
        if conn.sock is None:  # the server closed it after the response (gunicorn sync)
            return
        with self.lock:
            self.idle.append(conn)
            while len(self.idle) > self.keep:
                self.idle.pop(0).close()

    def close(self) -> None:
        with self.lock:
            for conn in self.idle:
                conn.close()
            self.idle.clear()


def _exchange(conn: http.client.HTTPConnection, shot: Shot, close: bool) -> None:
    assert conn.sock is not None
    shot.port = conn.sock.getsockname()[1]
    headers = {"Connection": "close"} if close else {}
    shot.send_ns = time.monotonic_ns()
    conn.request("GET", f"/work/{shot.work_ms}", headers=headers)
    reply = conn.getresponse()
    reply.read()
    shot.done_ns = time.monotonic_ns()
    shot.status = reply.status
    shot.entry_ns = int(reply.getheader("X-Entry-Ns") or 0)
    shot.exit_ns = int(reply.getheader("X-Exit-Ns") or 0)
    shot.accept_ns = int(reply.getheader("X-Accept-Ns") or 0)
    shot.pid = int(reply.getheader("X-Pid") or 0)


def _fire(port: int, shot: Shot, pool: _Pool, timeout: float) -> None:
    try:
        if shot.kind == "fresh":
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            try:
                conn.connect()
                _exchange(conn, shot, close=True)
            finally:
                conn.close()
            return
        conn, reused = pool.take()
        if conn.sock is None:
            conn.connect()
        try:
            _exchange(conn, shot, close=False)
        except (http.client.RemoteDisconnected, ConnectionError) as exc:
            conn.close()
            if not reused:
                raise
            # The server closed it while idle (its keep-alive timeout): a client retries on
            # a new connection, and so do we; the request never reached the app.
            shot.error = f"retried after {type(exc).__name__}"
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
            conn.connect()
            _exchange(conn, shot, close=False)
        pool.give(conn)
    except Exception as exc:  # scored as missing; the run goes on
        shot.error = f"{type(exc).__name__}: {exc}"
        shot.status = 0


def send(port: int, shots: Sequence[Shot], timeout: float = 20.0) -> list[Shot]:
    """Send every shot at its planned time (open loop); returns when all are answered."""
    pool = _Pool(port, timeout)
    start = time.monotonic()
    with ThreadPoolExecutor(max_workers=128) as executor:
        for shot in shots:
            delay = start + shot.at_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            executor.submit(_fire, port, shot, pool, timeout)
    pool.close()
    return list(shots)


# -- scoring -------------------------------------------------------------------------------


def at_capacity_ns(shot: Shot, others: Sequence[Shot], capacity: int) -> int:
    """How long, between the shot's ready time and its entry, its worker ran ``capacity``
    or more other requests."""
    start, end = shot.ready_ns, shot.entry_ns
    if end <= start:
        return 0
    edges: list[tuple[int, int]] = []
    for o in others:
        if o is shot or o.entry_ns >= end or o.exit_ns <= start:
            continue
        edges.append((max(o.entry_ns, start), 1))
        edges.append((min(o.exit_ns, end), -1))
    edges.sort()
    running = full = 0
    last = start
    for t, step in edges:
        if running >= capacity:
            full += t - last
        running += step
        last = t
    if running >= capacity:
        full += end - last
    return full


@dataclass
class Verdict:
    shot: Shot
    truth: bool | None  # None: within the band around the threshold
    found: dict[str, Any] | None  # the sidecar's record, if any
    said_blocked: bool
    error_ms: float | None  # sidecar wait - true wait


@dataclass
class Score:
    requests: int
    positives: int
    negatives: int
    ambiguous: int
    true_pos: int
    false_pos: int
    false_neg: int
    unmatched: int
    failed: int
    errors_ms: list[float] = field(default_factory=list)
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def recall(self) -> float:
        return self.true_pos / self.positives if self.positives else 1.0

    @property
    def precision(self) -> float:
        said = self.true_pos + self.false_pos
        return self.true_pos / said if said else 1.0

    @property
    def median_error_ms(self) -> float | None:
        return statistics.median(abs(e) for e in self.errors_ms) if self.errors_ms else None

    @property
    def p95_error_ms(self) -> float | None:
        if not self.errors_ms:
            return None
        errors = sorted(abs(e) for e in self.errors_ms)
        return errors[min(len(errors) - 1, int(0.95 * len(errors)))]

    def row(self) -> str:
        def ms(v: float | None) -> str:
            return "-" if v is None else f"{v:.1f}"

        return (
            f"recall {self.recall:.2f} ({self.true_pos}/{self.positives})  "
            f"precision {self.precision:.2f} (fp {self.false_pos})  "
            f"wait error median {ms(self.median_error_ms)} ms p95 {ms(self.p95_error_ms)} ms  "
            f"[n={self.requests} ambiguous={self.ambiguous} unmatched={self.unmatched} "
            f"failed={self.failed}]"
        )

    def misses(self) -> list[str]:
        """The wrong verdicts, one line each (for assertion messages)."""
        out = []
        for v in self.verdicts:
            if v.truth is None or v.truth == v.said_blocked:
                continue
            s = v.shot
            found = v.found or {}
            out.append(
                f"{'missed' if v.truth else 'false'} {s.kind} #{s.index} port {s.port} pid "
                f"{s.pid} true wait {s.wait_ns / 1e6:.1f} ms, sidecar "
                f"{found.get('wait_s')} s via {found.get('wait_source')}"
            )
        return out


def index_records(
    records: Sequence[Mapping[str, Any]],
) -> dict[tuple[int, int], list[Mapping[str, Any]]]:
    by_conn: dict[tuple[int, int], list[Mapping[str, Any]]] = {}
    for r in records:
        port = int(str(r["peer"]).rsplit(":", 1)[1] or 0)
        by_conn.setdefault((int(r["pid"]), port), []).append(r)
    return by_conn


def match(shot: Shot, by_conn: Mapping[tuple[int, int], list[Mapping[str, Any]]]) -> Any:
    candidates = by_conn.get((shot.pid, shot.port), [])
    best = min(candidates, key=lambda r: abs(int(r["entry_ns"]) - shot.entry_ns), default=None)
    if best is None or abs(int(best["entry_ns"]) - shot.entry_ns) > MATCH_NS:
        return None
    return best


def score(
    shots: Sequence[Shot],
    records: Sequence[Mapping[str, Any]],
    *,
    capacity: int,
    threshold_s: float = 0.05,
    band_s: float = 0.01,
    kind: Kind | None = None,
) -> Score:
    """Score the sidecar's ``records`` (``/api/requests``) against the shots' truth."""
    threshold, band = int(threshold_s * 1e9), int(band_s * 1e9)
    answered = [s for s in shots if s.status == 200 and s.entry_ns]
    by_pid: dict[int, list[Shot]] = {}
    for s in answered:
        by_pid.setdefault(s.pid, []).append(s)
    by_conn = index_records(records)
    result = Score(len(shots), 0, 0, 0, 0, 0, 0, 0, len(shots) - len(answered))
    for shot in answered:
        if kind is not None and shot.kind != kind:
            continue
        full = at_capacity_ns(shot, by_pid[shot.pid], capacity)
        truth: bool | None = full > threshold
        if abs(full - threshold) < band or abs(shot.wait_ns - threshold) < band:
            truth = None
        found = match(shot, by_conn)
        said = bool(found and found["blocked"])
        error = None
        if found is not None and found.get("wait_s") is not None:
            error = float(found["wait_s"]) * 1e3 - shot.wait_ns / 1e6
        result.verdicts.append(Verdict(shot, truth, found, said, error))
        if found is None:
            result.unmatched += 1
        if truth is None:
            result.ambiguous += 1
        elif truth:
            result.positives += 1
            if said:
                result.true_pos += 1
            else:
                result.false_neg += 1
            if error is not None:
                result.errors_ms.append(error)
        else:
            result.negatives += 1
            if said:
                result.false_pos += 1
    if kind is not None:
        mine = [s for s in shots if s.kind == kind]
        result.requests = len(mine)
        result.failed = sum(1 for s in mine if not (s.status == 200 and s.entry_ns))
    return result
