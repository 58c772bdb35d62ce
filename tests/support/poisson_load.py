"""Seeded open-loop traffic for the remedy proofs: the same requests, at the same moments,
against a server before and after a configuration change.

Arrivals are a Poisson process (exponential gaps from a seeded generator), sent at their
planned times whatever the server does (open loop, as real users). A share of them is slow
(``/slow/SECONDS`` of ``apps.basic``, uniform in a range), the rest are ``/fast``. Every
request opens its own connection, so the traffic does not depend on the server's
keep-alive setting. Count and time are bounded.
"""

from __future__ import annotations

import http.client
import random
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from wsgiwatch.remedies.model import percentile


@dataclass(frozen=True)
class Traffic:
    rate: float = 30.0  # requests per second
    duration_s: float = 10.0
    slow_share: float = 0.12
    slow_s: tuple[float, float] = (0.12, 0.8)
    seed: int = 1
    max_requests: int = 1000


@dataclass
class Shot:
    at_s: float  # planned send time from the start
    path: str
    route: str
    latency_s: float = 0.0
    done_at_s: float = 0.0
    error: str = ""


def plan(traffic: Traffic) -> list[Shot]:
    rng = random.Random(traffic.seed)
    shots: list[Shot] = []
    at = rng.expovariate(traffic.rate)
    while at < traffic.duration_s and len(shots) < traffic.max_requests:
        if rng.random() < traffic.slow_share:
            seconds = rng.uniform(*traffic.slow_s)
            shots.append(Shot(at, f"/slow/{seconds:.3f}", "/slow/:id"))
        else:
            shots.append(Shot(at, "/fast", "/fast"))
        at += rng.expovariate(traffic.rate)
    return shots


def _fire(port: int, shot: Shot, t0: float) -> None:
    started = time.monotonic()
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        conn.request("GET", shot.path)
        reply = conn.getresponse()
        reply.read()
        conn.close()
        if reply.status != 200:
            shot.error = f"HTTP {reply.status}"
    except OSError as exc:
        shot.error = str(exc)
    done = time.monotonic()
    shot.latency_s, shot.done_at_s = done - started, done - t0


def send(port: int, shots: list[Shot]) -> list[Shot]:
    """Send each shot at its planned time; returns when all have finished."""
    with ThreadPoolExecutor(max_workers=64) as pool:
        t0 = time.monotonic()
        for shot in shots:
            delay = t0 + shot.at_s - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            pool.submit(_fire, port, shot, t0)
    return shots


@dataclass(frozen=True)
class Summary:
    """What the clients saw of one run."""

    requests: int
    errors: int
    fast_p50_s: float
    fast_p99_s: float
    throughput: float  # completed requests per second, first send to last completion

    @classmethod
    def of(cls, shots: list[Shot]) -> Summary:
        fast = [s.latency_s for s in shots if s.route == "/fast" and not s.error]
        done = [s for s in shots if not s.error]
        span = max(s.done_at_s for s in done) - min(s.at_s for s in done) if done else 0.0
        return cls(
            len(shots),
            len(shots) - len(done),
            percentile(fast, 0.5),
            percentile(fast, 0.99),
            len(done) / span if span else 0.0,
        )
