"""The sidecar's plain counters and histograms, and their metric families."""

from __future__ import annotations

import math

import pytest

from wsgiwatch.sidecar.accumulate import (
    OTHER,
    WAIT_BUCKETS,
    Counter,
    Histogram,
    LabelCap,
)


def test_label_cap_keeps_the_first_values_and_folds_the_rest() -> None:
    cap = LabelCap(3)
    assert [cap(v) for v in ("/a", "/b", "/a", "/c", "/d", "/e")] == [
        "/a",
        "/b",
        "/a",
        "/c",
        OTHER,
        OTHER,
    ]
    # Values admitted before the cap stay themselves for good.
    assert cap("/b") == "/b"
    assert cap("/d") == OTHER


def test_label_cap_of_zero_folds_everything() -> None:
    cap = LabelCap(0)
    assert cap("/a") == OTHER


def buckets(hist: Histogram, labels: tuple[str, ...] = ()) -> dict[str, float]:
    fam = hist.family("h", "doc", ["route"] if labels else [])
    return {
        s.labels["le"]: s.value
        for s in fam.samples
        if s.name == "h_bucket" and all(s.labels.get("route") == v for v in labels)
    }


def test_histogram_buckets_are_cumulative_and_inclusive_of_their_bound() -> None:
    hist = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 2.0):
        hist.observe((), v)
    assert buckets(hist) == {"0.1": 2, "1.0": 4, "+Inf": 5}
    fam = hist.family("h", "doc", [])
    by_name = {s.name: s.value for s in fam.samples if s.name != "h_bucket"}
    assert by_name["h_count"] == 5
    assert by_name["h_sum"] == pytest.approx(3.65)


def test_histogram_series_by_label() -> None:
    hist = Histogram(WAIT_BUCKETS)
    hist.observe(("/a",), 0.003)
    hist.observe(("/b",), 100.0)
    hist.observe(("/b",), 0.0)
    assert buckets(hist, ("/a",))["+Inf"] == 1
    assert buckets(hist, ("/c",)) == {}
    b = buckets(hist, ("/b",))
    assert b["0.001"] == 1 and b["60.0"] == 1 and b["+Inf"] == 2
    assert len(b) == len(WAIT_BUCKETS) + 1


def test_bucket_bounds_are_sorted() -> None:
    assert list(WAIT_BUCKETS) == sorted(WAIT_BUCKETS)
    assert not any(math.isinf(b) for b in WAIT_BUCKETS)


def test_counter_sums_by_labels() -> None:
    c = Counter()
    c.inc(("x",))
    c.inc(("x",), 2.5)
    c.inc(("y",))
    fam = c.family("things_total", "doc", ["kind"])
    assert {s.labels["kind"]: s.value for s in fam.samples} == {"x": 3.5, "y": 1.0}


def test_unlabelled_counter_exposes_zero_before_anything_happens() -> None:
    fam = Counter().family("events_total", "doc")
    assert [(s.name, s.labels, s.value) for s in fam.samples] == [("events_total", {}, 0.0)]
    # A labelled one has no series to show until a label value exists.
    assert Counter().family("events_total", "doc", ["kind"]).samples == []


def test_a_scanner_cannot_push_a_real_route_into_other() -> None:
    """120 junk paths from a scanner first, then /checkout: it gets its own label after a
    few requests (before, it was ``other`` for the sidecar's life)."""
    cap = LabelCap(100)
    junk = [cap(f"/scan/{n}.php") for n in range(120)]
    assert junk.count(OTHER) == 120 - 75  # three quarters are given on sight
    first = [cap("/checkout") for _ in range(10)]
    assert first[:4] == [OTHER] * 4  # proving traffic, counted as other meanwhile
    assert first[4:] == ["/checkout"] * 6
    # Junk seen once each is never promoted, however much of it comes.
    assert all(cap(f"/scan/more/{n}") == OTHER for n in range(10_000))
    assert len(cap._candidates) <= 400  # bounded memory
    assert cap("/checkout") == "/checkout"


def test_the_reserved_labels_run_out_too() -> None:
    cap = LabelCap(8, promote_after=2)
    for n in range(6):
        assert cap(f"/r{n}") == f"/r{n}"
    for n in range(6, 10):
        assert cap(f"/r{n}") == OTHER
    assert [cap(f"/r{n}") for n in range(6, 10)] == ["/r6", "/r7", OTHER, OTHER]
