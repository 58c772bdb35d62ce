"""Arrival and accept times that servers and front proxies put in the WSGI environ.

This module turns those times into wall-clock nanoseconds since the epoch (``int``), or
``None`` when a value is absent, malformed or not trustworthy. It is imported by the WSGI
middleware, so it uses the standard library only, never raises on any input, and parses
by hand, without regular expressions (benchmarks/arrival_parse.py measures the cost).

Sources
-------

Front proxy headers (:func:`parse_proxy_header`), environ keys ``HTTP_X_REQUEST_START`` and
``HTTP_X_QUEUE_START``:

* nginx, ``proxy_set_header X-Request-Start "t=${msec}"``: ``t=1795742196.659``
  (seconds with a fraction);
* Apache ``RequestHeader set X-Request-Start "%t %D"``: ``t=1795742196659123 D=42``
  (``%t`` is microseconds with a ``t=`` prefix; ``D=`` is a duration and is skipped);
* Heroku's router: ``1795742196659`` (milliseconds);
* Render and some other platforms: ``1795742196659123456`` (nanoseconds).

The ``t=`` prefix is optional, surrounding whitespace is ignored, and a header may carry
several comma- or space-separated values (several proxies each adding one, or a server
joining repeated headers with ``", "``) and other ``key=value`` pairs: the first ``t`` value
(with or without ``t=``) that parses and passes the sanity checks below wins.

mod_wsgi environ keys (:func:`parse_mod_wsgi_time`, :func:`best_mod_wsgi_times`):
``mod_wsgi.request_start``, ``mod_wsgi.queue_start``, ``mod_wsgi.daemon_start`` and
``mod_wsgi.application_start``. mod_wsgi 6 gives Python floats, epoch seconds with
microsecond digits (``0.0`` for ``queue_start`` and ``daemon_start`` in embedded mode);
older releases gave decimal strings of microseconds (``"1795742196659123"``).

The magnitude rule
------------------

None of these sources names its unit, so the unit is picked by the magnitude of the number's
integer part ``v`` relative to the current time in seconds ``now_s``. The four candidate
units are a factor of 1000 apart, so each gets a band 1000 wide around (on a log scale)
where a current timestamp in that unit lies; the edges are at about ``now_s * 30`` (exactly
``now_ns >> 25``, ``now_s * 29.8``: a shift is cheaper than a division) times 1, 1e3, 1e6
and 1e9:

=====================  ============  ==========================
``v`` is below         unit          today looks like
=====================  ============  ==========================
``now_s * 30``         seconds       ``1795742196.659``
``now_s * 30e3``       milliseconds  ``1795742196659``
``now_s * 30e6``       microseconds  ``1795742196659123``
``now_s * 30e9``       nanoseconds   ``1795742196659123456``
anything larger        rejected
=====================  ============  ==========================

A value near an edge is about 30 times too large for one unit and 30 times too small for
the next, so either way it fails the age check below: the exact edges never matter.

A decimal fraction is kept exactly down to the nanosecond (digits past that are
truncated); a Python float is rounded to the microsecond, the precision mod_wsgi writes and
about the precision a double holds for a current epoch time in seconds (exact to the
microsecond until 2**32 s, the year 2106; about 1 us after that).

Sanity checks
-------------

A parsed time more than :data:`MAX_SKEW_NS` (1 s) after ``now_ns`` is rejected (a clock on
another host, or a forged header, that far ahead cannot be trusted); one that is later than
``now_ns`` by no more than that is clamped to ``now_ns`` (clock skew between the proxy and
this host, or ``now_ns`` read a little early). A time more than :data:`MAX_AGE_NS` (1 hour)
before ``now_ns`` is rejected as absurd (a wrong unit, a zero, a stale value). Empty,
negative, non-numeric, NaN and infinite values are rejected. Both limits can be overridden
per call with keyword arguments.

Header times are wall-clock times, possibly from another host: the spool records
``CLOCK_MONOTONIC`` times, so convert with :func:`wall_to_monotonic_ns` using a wall and a
monotonic reading taken together.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

__all__ = [
    "MAX_AGE_NS",
    "MAX_SKEW_NS",
    "best_mod_wsgi_times",
    "parse_mod_wsgi_time",
    "parse_proxy_header",
    "wall_to_monotonic_ns",
]

NS_PER_S = 1_000_000_000

#: A parsed time later than ``now_ns`` by more than this is rejected; by less, clamped to now.
MAX_SKEW_NS = 1 * NS_PER_S

#: A parsed time earlier than ``now_ns`` by more than this is rejected.
MAX_AGE_NS = 3600 * NS_PER_S

# now_ns >> _BAND_SHIFT == now_s * 29.8 (1e9 / 2**25): the upper edge of the "seconds" band.
# A shift, not a division by 10**1.5 * 1e6: it is on the hot path, and the exact edge does
# not matter (a value near an edge is a factor of 30 from now in either unit: rejected).
_BAND_SHIFT = 25

# Longest numeric token worth parsing: 19 integer digits (nanoseconds until 2286), a dot and
# 9 fraction digits, with room to spare. Also keeps int() far below its digit limit.
_MAX_NUMBER_LEN = 40

_POW10: tuple[int, ...] = tuple(10**i for i in range(_MAX_NUMBER_LEN + 1))

_T_PREFIXES = ("t=", "T=")


def _within(ns: int, now_ns: int, max_age_ns: int, max_skew_ns: int) -> int | None:
    """Apply the sanity window: reject far future and old times, clamp small skew to now."""
    if ns > now_ns:
        return now_ns if ns - now_ns <= max_skew_ns else None
    return ns if now_ns - ns <= max_age_ns else None


def _decimal_to_ns(text: str, now_ns: int) -> int | None:
    """Parse ``DIGITS`` or ``DIGITS.DIGITS`` (ASCII only) and scale it by the magnitude rule.

    Not range-checked: the result may be far from now (see :func:`_within`).
    """
    # isdigit() alone would accept non-ASCII digits like "²" that int() rejects.
    if len(text) > _MAX_NUMBER_LEN or not text.isascii():
        return None
    band = now_ns >> _BAND_SHIFT
    dot = text.find(".")
    if dot < 0:
        if not text.isdigit():  # also rejects "", signs, "_", "nan", "inf"
            return None
        v = int(text)
        if v < band:
            return v * NS_PER_S
        if v < band * 1_000:
            return v * 1_000_000
        if v < band * 1_000_000:
            return v * 1_000
        if v < band * 1_000_000_000:
            return v
        return None
    # DIGITS.DIGITS: c = the number times 10**f, f = number of fraction digits.
    f = len(text) - dot - 1
    digits = text.replace(".", "", 1)
    if dot == 0 or f == 0 or not digits.isdigit():  # ".5", "1.", "1.2.3", "1.x"
        return None
    c = int(digits)
    p = _POW10[f]
    if c < band * p:
        e = 9  # seconds: ns = number * 10**9
    elif c < band * 1_000 * p:
        e = 6
    elif c < band * 1_000_000 * p:
        e = 3
    elif c < band * 1_000_000_000 * p:
        e = 0
    else:
        return None
    # Exact; fraction digits past the nanosecond are truncated.
    return c * _POW10[e - f] if e >= f else c // _POW10[f - e]


def _int_to_ns(v: int, now_ns: int) -> int | None:
    """Scale an integer by the magnitude rule (negative values come out negative)."""
    band = now_ns >> _BAND_SHIFT
    if v < band:
        return v * NS_PER_S
    if v < band * 1_000:
        return v * 1_000_000
    if v < band * 1_000_000:
        return v * 1_000
    if v < band * 1_000_000_000:
        return v
    return None


def _float_to_ns(v: float, now_ns: int) -> int | None:
    """Scale a finite float by the magnitude rule, rounding to the microsecond."""
    band = now_ns >> _BAND_SHIFT
    if v < band:
        return round(v * 1e6) * 1_000
    if v < band * 1_000:
        return round(v * 1e3) * 1_000
    if v < band * 1_000_000:
        return round(v) * 1_000
    if v < band * 1_000_000_000:
        return round(v)
    return None


def parse_proxy_header(
    value: str,
    now_ns: int,
    *,
    max_age_ns: int = MAX_AGE_NS,
    max_skew_ns: int = MAX_SKEW_NS,
) -> int | None:
    """Parse an ``X-Request-Start`` / ``X-Queue-Start`` header value.

    ``now_ns`` is the current wall time (``time.time_ns()``). Returns the time in wall-clock
    nanoseconds since the epoch, or ``None``. Accepted: ``t=1795742196.659`` (nginx
    ``${msec}``), ``t=1795742196659123`` (Apache ``%t``), ``1795742196659`` (Heroku, ms),
    ``1795742196659123456`` (ns), with or without ``t=``, surrounded by any whitespace, and
    lists like ``t=..., t=...`` or ``t=... D=...``: the first ``t`` value that parses and
    lies within [now - max_age_ns, now + max_skew_ns] is returned (clamped to at most
    ``now_ns``). Never raises.
    """
    try:
        token = value.strip()
        if "," not in token and " " not in token:
            # Fast path: a single value, by far the common case.
            if token.startswith(_T_PREFIXES):
                token = token[2:]
            ns = _decimal_to_ns(token, now_ns)
            if ns is not None:
                return _within(ns, now_ns, max_age_ns, max_skew_ns)
        # A list ("t=A, t=B", "t=A D=B"), or garbage.
        for token in (value.replace(",", " ") if "," in value else value).split():
            if token.startswith(_T_PREFIXES):
                token = token[2:]
            elif "=" in token:
                continue  # another key=value pair, e.g. Apache's D=<duration>
            ns = _decimal_to_ns(token, now_ns)
            if ns is not None and (found := _within(ns, now_ns, max_age_ns, max_skew_ns)):
                return found
        return None
    except Exception:  # never break the app over a header (e.g. a non-str value)
        return None


def parse_mod_wsgi_time(
    value: object,
    now_ns: int,
    *,
    max_age_ns: int = MAX_AGE_NS,
    max_skew_ns: int = MAX_SKEW_NS,
) -> int | None:
    """Parse a ``mod_wsgi.*_start`` environ value into wall-clock ns since the epoch.

    Accepts a float (mod_wsgi 6: epoch seconds with microsecond digits), an int or a decimal
    string (older mod_wsgi: microseconds as a string, e.g. ``"1795742196659123"``; a
    fraction such as ``"1795742196.659123"`` is fine too), and ASCII bytes of such a string.
    The unit comes from the magnitude rule (see the module docstring), then the same sanity
    window as headers applies. Any other type (``None``, ``bool``, ``Decimal``, lists, ...)
    gives ``None``; no user ``__float__`` is ever called. Never raises.
    """
    try:
        ns: int | None
        if isinstance(value, float):
            if not math.isfinite(value):
                return None
            ns = _float_to_ns(value, now_ns)
        elif isinstance(value, int):
            if isinstance(value, bool):
                return None
            ns = _int_to_ns(value, now_ns)
        elif isinstance(value, str):
            text = value.strip()
            if text.startswith(_T_PREFIXES):
                text = text[2:]
            ns = _decimal_to_ns(text, now_ns)
        elif isinstance(value, (bytes, bytearray)):
            return parse_mod_wsgi_time(
                bytes(value).decode("latin-1"),
                now_ns,
                max_age_ns=max_age_ns,
                max_skew_ns=max_skew_ns,
            )
        else:
            return None
        if ns is None:
            return None
        return _within(ns, now_ns, max_age_ns, max_skew_ns)
    except Exception:  # e.g. a float or str subclass whose methods raise
        return None


def best_mod_wsgi_times(
    environ: Mapping[str, object],
    now_ns: int,
    *,
    max_age_ns: int = MAX_AGE_NS,
    max_skew_ns: int = MAX_SKEW_NS,
) -> tuple[int | None, int | None]:
    """Return ``(request_start_ns, queue_start_ns)`` from mod_wsgi's environ keys.

    * ``request_start_ns`` (``mod_wsgi.request_start``, Apache's ``r->request_time``): when
      the Apache child process that accepted the connection read this request's request
      line, i.e. this request's arrival time at Apache. For the first request on a
      connection that is just after Apache's accept; for a keep-alive request, later.
    * ``queue_start_ns`` (``mod_wsgi.queue_start``, daemon mode only): when that Apache
      child, after its own request phases (authentication, access checks, ...), began
      handing the request to the mod_wsgi daemon process group, i.e. just before it
      connected to the daemon's listener socket. Time from here until
      ``mod_wsgi.daemon_start`` (a daemon thread accepted it) is spent in that socket's
      kernel backlog, which is healthy queueing: a mod_wsgi daemon thread only accepts when
      it is free. ``None`` in embedded mode (mod_wsgi 6 sets ``0.0`` there; older releases
      omit the key).

    Each is ``None`` when absent or failing the checks of :func:`parse_mod_wsgi_time`; a
    ``queue_start`` earlier than ``request_start`` (impossible: both come from one clock on
    one host) is dropped. Never raises.
    """
    try:
        request_ns = parse_mod_wsgi_time(
            environ.get("mod_wsgi.request_start"),
            now_ns,
            max_age_ns=max_age_ns,
            max_skew_ns=max_skew_ns,
        )
        queue_ns = parse_mod_wsgi_time(
            environ.get("mod_wsgi.queue_start"),
            now_ns,
            max_age_ns=max_age_ns,
            max_skew_ns=max_skew_ns,
        )
    except Exception:  # a Mapping whose get() raises
        return None, None
    if request_ns is not None and queue_ns is not None and queue_ns < request_ns:
        queue_ns = None
    return request_ns, queue_ns


def wall_to_monotonic_ns(wall_ns: int, now_wall_ns: int, now_mono_ns: int) -> int:
    """Convert a wall-clock time into ``CLOCK_MONOTONIC`` nanoseconds.

    The spool records monotonic times (``time.monotonic_ns()``: one clock for every process
    on the host, immune to wall-clock steps), while headers and mod_wsgi give wall times.
    ``now_wall_ns`` (``time.time_ns()``) and ``now_mono_ns`` (``time.monotonic_ns()``) must be
    read together, back to back, in the same request: the result is
    ``now_mono_ns - (now_wall_ns - wall_ns)``, so its error is the gap between the two
    readings (tens of nanoseconds) plus any wall-clock step that happened between
    ``wall_ns`` and that pair. The result may be negative for very old times; callers that
    parsed ``wall_ns`` with the functions above get times at most an hour old.
    """
    return now_mono_ns - (now_wall_ns - wall_ns)
