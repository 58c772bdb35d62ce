"""Tests for wsgiwatch.worker.arrival: proxy headers, mod_wsgi keys, the magnitude rule, clocks."""

from __future__ import annotations

import ast
import decimal
import fractions
import math
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

import wsgiwatch.worker.arrival as arrival
from wsgiwatch.worker.arrival import (
    MAX_AGE_NS,
    MAX_SKEW_NS,
    best_mod_wsgi_times,
    parse_mod_wsgi_time,
    parse_proxy_header,
    wall_to_monotonic_ns,
)

S = 1_000_000_000
MS = 1_000_000
US = 1_000

# A request that arrived at T, parsed at NOW (3.34 s later).
T = 1_795_742_196_659_123_456
NOW = 1_795_742_200_000_000_000

T_S = T // S  # 1795742196
T_MS = T // MS  # 1795742196659
T_US = T // US  # 1795742196659123


# --- proxy headers: accepted forms ------------------------------------------------------

HEADER_CASES = [
    # nginx t=${msec}: seconds with a millisecond fraction
    ("t=1795742196.659", T_MS * MS),
    # seconds, other fraction lengths (fraction kept exactly to the ns, then truncated)
    ("t=1795742196", T_S * S),
    ("t=1795742196.6", T_S * S + 600 * MS),
    ("t=1795742196.659123", T_US * US),
    ("t=1795742196.659123456", T),
    ("t=1795742196.6591234569999", T),
    # Apache %t: microseconds with t=
    ("t=1795742196659123", T_US * US),
    # Apache "%t %D"
    ("t=1795742196659123 D=1234", T_US * US),
    # Heroku: milliseconds, no prefix
    ("1795742196659", T_MS * MS),
    # milliseconds with a fraction
    ("t=1795742196659.123", T_US * US),
    # microseconds without prefix, with a fraction
    ("1795742196659123", T_US * US),
    ("1795742196659123.456", T),
    # Render: nanoseconds
    ("1795742196659123456", T),
    ("t=1795742196659123456", T),
    # a fraction on nanoseconds is below resolution
    ("1795742196659123456.9", T),
    # uppercase prefix, leading zeros
    ("T=1795742196.659", T_MS * MS),
    ("t=01795742196.659", T_MS * MS),
    # whitespace around and inside lists
    ("  t=1795742196.659  ", T_MS * MS),
    ("\tt=1795742196.659\r\n", T_MS * MS),
    ("\u00a0t=1795742196.659\u2003", T_MS * MS),
    # several values: the first valid t value wins
    ("t=1795742196.659, t=1795742197.000", T_MS * MS),
    ("t=1795742196.659,t=1795742197.000", T_MS * MS),
    ("t=1795742196.659 t=1795742197.000", T_MS * MS),
    ("t=1795742197.000, t=1795742196.659", 1_795_742_197 * S),
    # other key=value pairs are skipped, wherever they are
    ("D=1234, t=1795742196659123", T_US * US),
    ("x=1795742100 t=1795742196659123", T_US * US),
    # invalid or untrustworthy values are skipped in favour of a later valid one
    ("t=abc, t=1795742196.659", T_MS * MS),
    ("t=, t=1795742196.659", T_MS * MS),
    ("t=9795742196.659, t=1795742196.659", T_MS * MS),  # first one far in the future
    ("t=0, 1795742196659", T_MS * MS),  # first one absurdly old
    # mixed units in one header
    ("t=1795742196659123, 1795742196.5", T_US * US),
    # a decimal comma is a list separator: whole seconds, then "659" (too old, ignored)
    ("t=1795742196,659", T_S * S),
    # exactly at the limits
    (str(NOW - MAX_AGE_NS), NOW - MAX_AGE_NS),
    (str(NOW), NOW),
]


@pytest.mark.parametrize(("value", "expected"), HEADER_CASES)
def test_proxy_header_forms(value: str, expected: int) -> None:
    assert parse_proxy_header(value, NOW) == expected


def test_proxy_header_clamps_small_future_skew_to_now() -> None:
    assert parse_proxy_header(str(NOW + 1), NOW) == NOW
    assert parse_proxy_header(str(NOW + MAX_SKEW_NS), NOW) == NOW
    assert parse_proxy_header(f"t={NOW // S}.5", NOW) == NOW
    # nginx's msec rounded up past now
    assert parse_proxy_header("t=1795742200.001", NOW) == NOW


# --- proxy headers: rejected values -----------------------------------------------------

REJECTED_HEADERS = [
    "",
    " ",
    ",",
    ", ,",
    "t=",
    "t",
    "=",
    "t==1795742196.659",
    "garbage",
    "t=garbage",
    "D=1795742196659123",  # a duration key, not a time
    "x=1795742196659123",
    "-1795742196.659",
    "t=-1795742196.659",
    "+1795742196.659",
    "t=1795742196.",
    "t=.659",
    "t=1795742196.659.1",
    "t=1.795742196659e9",
    "t=0x6b08a2f4",
    "t=1_795_742_196",
    "nan",
    "t=nan",
    "NaN",
    "inf",
    "t=inf",
    "-inf",
    "Infinity",
    "t=1795742196.659abc",
    "t=\u0661\u0667\u0669\u0665\u0667\u0664\u0662\u0661\u0669\u0666",  # Arabic-Indic digits
    "t=\u00b2\u00b2",  # superscript digits: isdigit() but not int()-able
    "t=1795742196.\u00b2",
    "0",
    "t=0",
    "1",
    # too far in the future: 1 s + 1 ns
    str(NOW + MAX_SKEW_NS + 1),
    "t=1795742260.000",  # a minute ahead
    "t=9999999999",
    # too old: 1 hour + 1 ns, a day, a year
    str(NOW - MAX_AGE_NS - 1),
    "t=1795655796.659",
    "t=1764206196.659",
    # beyond every unit band
    "1" * 25,
    "9" * 100,
    "1" * 5000,  # past int()'s digit limit
    "t=" + "1" * 5000,
    "1795742196." + "1" * 5000,
]


@pytest.mark.parametrize("value", REJECTED_HEADERS)
def test_proxy_header_rejects(value: str) -> None:
    assert parse_proxy_header(value, NOW) is None


@pytest.mark.parametrize("value", [None, b"t=1795742196.659", 1795742196.659, ["t=1"], object()])
def test_proxy_header_non_str_gives_none(value: Any) -> None:
    assert parse_proxy_header(value, NOW) is None


def test_proxy_header_limits_are_overridable() -> None:
    two_hours_ago = str(NOW - 2 * 3600 * S)
    assert parse_proxy_header(two_hours_ago, NOW) is None
    assert parse_proxy_header(two_hours_ago, NOW, max_age_ns=3 * 3600 * S) == NOW - 2 * 3600 * S
    five_s_ahead = str(NOW + 5 * S)
    assert parse_proxy_header(five_s_ahead, NOW) is None
    assert parse_proxy_header(five_s_ahead, NOW, max_skew_ns=10 * S) == NOW
    assert parse_proxy_header(str(NOW + 1), NOW, max_skew_ns=0) is None


# --- the magnitude rule -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("digits", "unit_ns"),
    [
        ("1795742196", S),
        ("1795742196659", MS),
        ("1795742196659123", US),
        ("1795742196659123456", 1),
    ],
)
def test_magnitude_rule_picks_unit(digits: str, unit_ns: int) -> None:
    assert parse_proxy_header(digits, NOW, max_age_ns=NOW) == int(digits) * unit_ns


@pytest.mark.parametrize(
    "now_ns",
    [
        1_000_000_000 * S,  # 2001
        1_795_742_200 * S,
        4_102_444_800 * S,  # 2100
        9_999_999_999 * S,  # 2286
    ],
)
def test_magnitude_rule_follows_now(now_ns: int) -> None:
    t = now_ns - 1234_567_891
    for unit_ns in (S, MS, US, 1):
        text = str(t // unit_ns)
        assert parse_proxy_header(text, now_ns) == t - t % unit_ns


def test_magnitude_bands_are_a_factor_1000_wide_around_now() -> None:
    # Edges of the bands, without the age check, seen through the private helpers.
    band = NOW >> arrival._BAND_SHIFT
    assert 29 * (NOW // S) < band < 31 * (NOW // S)
    edges = [(band - 1, S), (band, MS), (band * 1000, US), (band * 10**6, 1)]
    for v, unit_ns in edges:
        assert arrival._int_to_ns(v, NOW) == v * unit_ns
        assert arrival._decimal_to_ns(str(v), NOW) == v * unit_ns
        assert arrival._decimal_to_ns(f"{v}.000", NOW) == v * unit_ns
        assert arrival._float_to_ns(float(v), NOW) == v * unit_ns
    assert arrival._int_to_ns(band * 10**9, NOW) is None
    assert arrival._decimal_to_ns(str(band * 10**9), NOW) is None
    assert arrival._decimal_to_ns(f"{band * 10**9}.5", NOW) is None
    assert arrival._float_to_ns(float(band * 10**9 * 2), NOW) is None
    # The edge is never close to an acceptable time in either unit.
    assert parse_proxy_header(str(band - 1), NOW, max_skew_ns=0) is None
    assert parse_proxy_header(str(band), NOW, max_skew_ns=0) is None


# --- mod_wsgi ---------------------------------------------------------------------------

MOD_WSGI_CASES: list[tuple[object, int]] = [
    # mod_wsgi 6: float seconds with microsecond digits (apr_time_sec((double)us))
    (T_US / 1_000_000, T_US * US),
    (1795742196.659123, T_US * US),
    (1795742196.0, T_S * S),
    # older mod_wsgi: decimal string of microseconds
    ("1795742196659123", T_US * US),
    (" 1795742196659123\n", T_US * US),
    # int microseconds
    (T_US, T_US * US),
    # numeric strings with a fraction, t= prefix, other units
    ("1795742196.659123", T_US * US),
    ("1795742196.659123456", T),
    ("t=1795742196659123", T_US * US),
    ("1795742196659", T_MS * MS),
    ("1795742196659123456", T),
    (T, T),
    (T_MS, T_MS * MS),
    (T_S, T_S * S),
    # float in other units
    (float(T_MS), T_MS * MS),
    (T_US / 1000, T_US * US),
    (float(T_US), T_US * US),
    # bytes of a string
    (b"1795742196659123", T_US * US),
    (bytearray(b"1795742196.659123"), T_US * US),
    # a float subclass (like numpy.float64)
    (type("F", (float,), {})(1795742196.659123), T_US * US),
]


@pytest.mark.parametrize(("value", "expected"), MOD_WSGI_CASES)
def test_mod_wsgi_forms(value: object, expected: int) -> None:
    assert parse_mod_wsgi_time(value, NOW) == expected


class RaisingNumber:
    def __float__(self) -> float:
        raise RuntimeError("no float")

    def __int__(self) -> int:
        raise RuntimeError("no int")

    def __index__(self) -> int:
        raise RuntimeError("no index")

    def __str__(self) -> str:
        raise RuntimeError("no str")


class RaisingFloat(float):
    def __lt__(self, other: object) -> bool:
        raise RuntimeError("no compare")

    def __float__(self) -> float:
        raise RuntimeError("no float")

    def __mul__(self, other: object) -> float:
        raise RuntimeError("no mul")


class RaisingInt(int):
    def __lt__(self, other: object) -> bool:
        raise RuntimeError("no compare")

    def __mul__(self, other: object) -> int:
        raise RuntimeError("no mul")


class RaisingStr(str):
    __slots__ = ()

    def strip(self, chars: str | None = None) -> str:
        raise RuntimeError("no strip")


REJECTED_MOD_WSGI: list[object] = [
    None,
    0.0,  # queue_start / daemon_start in embedded mode
    0,
    "0",
    "",
    " ",
    True,
    False,
    -1795742196.659123,
    "-1795742196659123",
    math.nan,
    math.inf,
    -math.inf,
    "nan",
    "inf",
    "1.795742196659123e9",
    1e300,
    -1e300,
    5e-324,
    10**400,
    -(10**400),
    T * 1000,
    "1" * 5000,
    b"\xff\xfe",
    b"",
    [T_US],
    (T_US,),
    {"t": T_US},
    {T_US},
    decimal.Decimal("1795742196.659123"),
    fractions.Fraction(T_US, 10**6),
    complex(1795742196.659123, 0),
    object(),
    RaisingNumber(),
    RaisingFloat(1795742196.659123),
    RaisingInt(T_US),
    RaisingStr("1795742196659123"),
    NOW / S + 2.0,  # 2 s in the future
    (NOW - 2 * MAX_AGE_NS) / S,  # two hours old
    str(NOW // US + 2 * US * 1000),  # 2 s in the future, microseconds
]


@pytest.mark.parametrize("value", REJECTED_MOD_WSGI, ids=repr)
def test_mod_wsgi_rejects(value: object) -> None:
    assert parse_mod_wsgi_time(value, NOW) is None


def test_mod_wsgi_clamps_small_skew() -> None:
    assert parse_mod_wsgi_time(NOW / S + 0.5, NOW) == NOW
    assert parse_mod_wsgi_time(str(NOW // US + 500_000), NOW) == NOW


def test_best_mod_wsgi_times_daemon_mode_floats() -> None:
    environ = {
        "mod_wsgi.request_start": 1795742196.659123,
        "mod_wsgi.queue_start": 1795742196.659500,
        "mod_wsgi.daemon_start": 1795742196.661000,
        "mod_wsgi.application_start": 1795742196.661200,
    }
    assert best_mod_wsgi_times(environ, NOW) == (T_US * US, 1_795_742_196_659_500_000)


def test_best_mod_wsgi_times_old_strings() -> None:
    environ = {
        "mod_wsgi.request_start": "1795742196659123",
        "mod_wsgi.queue_start": "1795742196659500",
    }
    assert best_mod_wsgi_times(environ, NOW) == (T_US * US, 1_795_742_196_659_500_000)


def test_best_mod_wsgi_times_embedded_mode() -> None:
    # mod_wsgi 6 sets 0.0; older releases omit the key
    assert best_mod_wsgi_times(
        {"mod_wsgi.request_start": 1795742196.659123, "mod_wsgi.queue_start": 0.0}, NOW
    ) == (T_US * US, None)
    assert best_mod_wsgi_times({"mod_wsgi.request_start": "1795742196659123"}, NOW) == (
        T_US * US,
        None,
    )


def test_best_mod_wsgi_times_absent_or_bad() -> None:
    assert best_mod_wsgi_times({}, NOW) == (None, None)
    assert best_mod_wsgi_times({"wsgi.version": (1, 0)}, NOW) == (None, None)
    assert best_mod_wsgi_times(
        {"mod_wsgi.request_start": "garbage", "mod_wsgi.queue_start": 1795742196.6595}, NOW
    ) == (None, 1_795_742_196_659_500_000)


def test_best_mod_wsgi_times_drops_queue_before_request() -> None:
    environ = {"mod_wsgi.request_start": 1795742196.659123, "mod_wsgi.queue_start": 1795742196.5}
    assert best_mod_wsgi_times(environ, NOW) == (T_US * US, None)


def test_best_mod_wsgi_times_mapping_that_raises() -> None:
    class Broken(dict[str, object]):
        def get(self, key: str, default: object = None) -> object:
            raise RuntimeError("broken mapping")

    assert best_mod_wsgi_times(Broken(), NOW) == (None, None)


# --- wall to monotonic ------------------------------------------------------------------


def test_wall_to_monotonic_examples() -> None:
    assert wall_to_monotonic_ns(T, NOW, 5_000 * S) == 5_000 * S - (NOW - T)
    assert wall_to_monotonic_ns(NOW, NOW, 123) == 123
    assert wall_to_monotonic_ns(NOW - 10 * S, NOW, 5 * S) == -5 * S


@given(
    wall=st.integers(min_value=0, max_value=2**63),
    now_wall=st.integers(min_value=0, max_value=2**63),
    now_mono=st.integers(min_value=0, max_value=2**63),
)
def test_wall_to_monotonic_preserves_intervals(wall: int, now_wall: int, now_mono: int) -> None:
    mono = wall_to_monotonic_ns(wall, now_wall, now_mono)
    assert now_mono - mono == now_wall - wall
    assert wall_to_monotonic_ns(wall + 1234, now_wall, now_mono) - mono == 1234


# --- property tests ---------------------------------------------------------------------

# Current times from 2001 to 2286: nine to ten digit seconds.
nows = st.integers(min_value=1_000_000_000 * S, max_value=9_999_999_999 * S)

header_alphabet = st.sampled_from(list("tT=D,. \t-+0123456789eEnaif_x\u00b2\u0661\u00a0"))
header_like = st.lists(
    st.one_of(
        st.text(header_alphabet, max_size=30),
        st.integers(min_value=-(10**25), max_value=10**25).map(str),
        st.integers(min_value=0, max_value=10**25).map(lambda n: f"t={n}"),
        st.floats(allow_nan=True, allow_infinity=True).map(lambda f: f"t={f}"),
    ),
    max_size=5,
).map(", ".join)


@given(value=st.one_of(st.text(), header_like), now_ns=nows)
def test_header_never_raises_and_stays_in_window(value: str, now_ns: int) -> None:
    got = parse_proxy_header(value, now_ns)
    assert got is None or now_ns - MAX_AGE_NS <= got <= now_ns


@given(value=st.text(), now_ns=st.integers())
def test_header_never_raises_for_any_now(value: str, now_ns: int) -> None:
    got = parse_proxy_header(value, now_ns)
    assert got is None or now_ns - MAX_AGE_NS <= got <= now_ns


@st.composite
def written_times(draw: st.DrawFn) -> tuple[int, int, str, int]:
    """A time within the window, written in some unit with some fraction and decoration.

    Returns (now_ns, t_ns, text, resolution_ns).
    """
    now_ns = draw(nows)
    # Keep a second away from the old edge so truncation cannot push it out of the window.
    t_ns = draw(st.integers(min_value=now_ns - MAX_AGE_NS + S, max_value=now_ns))
    unit_exp = draw(st.sampled_from([9, 6, 3, 0]))  # s, ms, us, ns
    frac_digits = draw(st.integers(min_value=0, max_value=unit_exp))
    whole, rem = divmod(t_ns, 10**unit_exp)
    text = str(whole)
    if frac_digits:
        text += "." + str(rem).zfill(unit_exp)[:frac_digits]
    if draw(st.booleans()):
        text = draw(st.sampled_from(["t=", "T="])) + text
    before = draw(st.lists(st.sampled_from(["D=42", "t=x", "t=", "x=1", "t=-1", "0"]), max_size=3))
    after = draw(
        st.lists(st.sampled_from(["D=42", f"t={now_ns // S - 60}", "garbage"]), max_size=3)
    )
    sep = draw(st.sampled_from([", ", ",", " ", " , "]))
    pad_left = draw(st.sampled_from(["", " ", "\t", "  "]))
    pad_right = draw(st.sampled_from(["", " ", "\r\n", "  "]))
    value = pad_left + sep.join([*before, text, *after]) + pad_right
    return now_ns, t_ns, value, 10 ** (unit_exp - frac_digits)


@given(written_times())
def test_header_round_trips_within_resolution(case: tuple[int, int, str, int]) -> None:
    now_ns, t_ns, value, resolution = case
    got = parse_proxy_header(value, now_ns)
    assert got is not None
    assert 0 <= t_ns - got < resolution
    assert got == t_ns - t_ns % resolution


# A double holds epoch seconds to the microsecond until 2**32 s (year 2106); past that its
# step is about 1 us, so mod_wsgi's float format itself loses the microsecond digit.
float_nows = st.integers(min_value=1_000_000_000 * S, max_value=(2**32 - 1) * S)


@given(now_ns=float_nows, data=st.data())
def test_mod_wsgi_round_trips(now_ns: int, data: st.DataObject) -> None:
    t_us = data.draw(st.integers(min_value=(now_ns - MAX_AGE_NS) // US + 1, max_value=now_ns // US))
    expected = t_us * US
    # mod_wsgi 6: apr_time_sec((double)request_time) == us / 1e6 as a double
    assert parse_mod_wsgi_time(t_us / 1_000_000, now_ns) == expected
    # older: "%" APR_TIME_T_FMT of the microseconds
    assert parse_mod_wsgi_time(str(t_us), now_ns) == expected
    assert parse_mod_wsgi_time(t_us, now_ns) == expected
    # a float from time.time()-like code carries sub-microsecond noise: within 1 us
    t_ns = data.draw(st.integers(min_value=now_ns - MAX_AGE_NS + S, max_value=now_ns - US))
    got = parse_mod_wsgi_time(t_ns / S, now_ns)
    assert got is not None
    assert abs(got - t_ns) <= US


class AnyObject:
    """Something with every conversion hook, each raising."""

    def __float__(self) -> float:
        raise ValueError

    def __int__(self) -> int:
        raise ValueError

    def __index__(self) -> int:
        raise ValueError

    def __str__(self) -> str:
        raise ValueError

    def __bytes__(self) -> bytes:
        raise ValueError

    def __eq__(self, other: object) -> bool:
        raise ValueError

    def __hash__(self) -> int:
        return 0


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.integers(min_value=10**18, max_value=10**40),
    st.integers(min_value=-(10**40), max_value=-(10**18)),
    st.floats(),
    st.floats(min_value=1e9, max_value=1e19),
    st.text(),
    st.text(st.sampled_from(list("0123456789. t=-e\u00b2"))),
    st.binary(),
    st.binary().map(bytearray),
    st.decimals(),
    st.fractions(),
    st.complex_numbers(),
    st.just(AnyObject()),
    st.floats(allow_nan=False).map(RaisingFloat),
    st.integers().map(RaisingInt),
    st.text().map(RaisingStr),
    st.from_type(object),
    st.from_type(type),
)
arbitrary_objects = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3),
        st.tuples(children, children),
        st.dictionaries(st.text(max_size=3), children, max_size=3),
    ),
    max_leaves=5,
)


@given(value=arbitrary_objects, now_ns=st.one_of(nows, st.integers()))
def test_mod_wsgi_never_raises(value: object, now_ns: int) -> None:
    got = parse_mod_wsgi_time(value, now_ns)
    assert got is None or now_ns - MAX_AGE_NS <= got <= now_ns


mod_wsgi_keys = st.sampled_from(
    [
        "mod_wsgi.request_start",
        "mod_wsgi.queue_start",
        "mod_wsgi.daemon_start",
        "mod_wsgi.application_start",
        "wsgi.version",
    ]
)


@given(environ=st.dictionaries(mod_wsgi_keys, arbitrary_objects), now_ns=nows)
def test_best_mod_wsgi_times_never_raises(environ: dict[str, object], now_ns: int) -> None:
    request_ns, queue_ns = best_mod_wsgi_times(environ, now_ns)
    for got in (request_ns, queue_ns):
        assert got is None or now_ns - MAX_AGE_NS <= got <= now_ns
    if request_ns is not None and queue_ns is not None:
        assert queue_ns >= request_ns


# --- the module itself ------------------------------------------------------------------


def test_module_imports_only_the_standard_library() -> None:
    tree = ast.parse(Path(arrival.__file__).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            imported.add(node.module.split(".")[0])
    assert imported <= set(sys.stdlib_module_names)
    assert "re" not in imported  # hand-parsed: no regex on the hot path
