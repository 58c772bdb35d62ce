"""Micro-benchmark of wsgiwatch.worker.arrival: nanoseconds per call for each accepted form.

Run: ``.venv/bin/python benchmarks/arrival_parse.py``. Each parse should cost about 1 us or
less on CPython 3.11 (it runs once or twice per request in the middleware).
"""

from __future__ import annotations

import sys
import time
import timeit
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from wsgiwatch.worker.arrival import (
    best_mod_wsgi_times,
    parse_mod_wsgi_time,
    parse_proxy_header,
    wall_to_monotonic_ns,
)


def main() -> None:
    now = time.time_ns()
    s, ms, us = now // 10**9, now // 10**6, now // 10**3
    header_cases = {
        "nginx t=<s>.<ms>": f"t={s}.{ms % 1000:03d}",
        "apache t=<us>": f"t={us}",
        "apache t=<us> D=<us>": f"t={us} D=1234",
        "heroku <ms>": str(ms),
        "render <ns>": str(now),
        "padded '  t=<s>.<ms>  '": f"  t={s}.{ms % 1000:03d}  ",
        "list t=bad, t=<s>.<ms>": f"t=abc, t={s}.{ms % 1000:03d}",
        "garbage": "garbage",
        "empty": "",
    }
    mod_wsgi_cases: dict[str, object] = {
        "mod_wsgi 6 float seconds": us / 1_000_000,
        "mod_wsgi <6 str microseconds": str(us),
        "int microseconds": us,
        "embedded 0.0": 0.0,
        "None (absent)": None,
    }
    environ = {
        "mod_wsgi.request_start": us / 1_000_000,
        "mod_wsgi.queue_start": (us + 300) / 1_000_000,
    }
    number = 200_000

    def report(label: str, stmt: object) -> None:
        best = min(timeit.repeat(stmt, number=number, repeat=7))  # type: ignore[arg-type]
        print(f"{label:<50} {best / number * 1e9:8.0f} ns/call")

    print(f"Python {sys.version.split()[0]}, best of 7 x {number} calls")
    for label, value in header_cases.items():
        report(f"parse_proxy_header {label}", lambda v=value: parse_proxy_header(v, now))
    for label, obj in mod_wsgi_cases.items():
        report(f"parse_mod_wsgi_time {label}", lambda v=obj: parse_mod_wsgi_time(v, now))
    report("best_mod_wsgi_times daemon mode", lambda: best_mod_wsgi_times(environ, now))
    report("wall_to_monotonic_ns", lambda: wall_to_monotonic_ns(now - 5000, now, 123456789))
    report("(baseline: empty lambda)", lambda: None)


if __name__ == "__main__":
    main()
