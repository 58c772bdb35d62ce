"""Head-of-line verdicts as pure functions: who blocked a request, was a sibling free."""

from __future__ import annotations

import math

import pytest

from wsgiwatch.sidecar.detect import Blame, Run, blockers, had_free_slot

MS = 1_000_000
NOW = 10_000 * MS
VICTIM = (1, 99)


def run(entry_ms: float, exit_ms: float | None, route: str = "/slow", *, request: int = 1) -> Run:
    """A run of pid 1; ``exit_ms=None`` means still running."""
    exit_ns = 0 if exit_ms is None else int(exit_ms * MS)
    return Run(1, request, int(entry_ms * MS), exit_ns, route, "GET")


def blame(ready_ms: float, entry_ms: float, runs: list[Run]) -> list[Blame]:
    return blockers(int(ready_ms * MS), int(entry_ms * MS), VICTIM, runs, NOW)


# --- blockers -------------------------------------------------------------------------------
def test_one_blocker_covering_the_whole_wait_takes_all_of_it() -> None:
    found = blame(100, 1000, [run(0, 1000)])
    assert len(found) == 1
    assert found[0].run.route == "/slow"
    assert found[0].overlap_ns == 900 * MS
    assert found[0].share_s == pytest.approx(0.9)


def test_partial_overlap_counts_only_the_part_inside_the_wait() -> None:
    # Started before the wait, ended inside it; another started inside it and ran past entry.
    found = blame(100, 1000, [run(0, 400, "/a", request=1), run(500, 2000, "/b", request=2)])
    assert [(b.run.route, b.overlap_ns) for b in found] == [("/b", 500 * MS), ("/a", 300 * MS)]


def test_the_wait_is_split_in_proportion_to_overlap_and_sums_to_the_wait() -> None:
    runs = [
        run(0, 300, "/a", request=1),  # 200 ms of the wait [100, 1100)
        run(300, 900, "/b", request=2),  # 600 ms
        run(900, 1500, "/c", request=3),  # 200 ms
    ]
    found = blame(100, 1100, runs)
    shares = {b.run.route: b.share_s for b in found}
    assert shares == pytest.approx({"/a": 0.2, "/b": 0.6, "/c": 0.2})
    assert math.fsum(shares.values()) == pytest.approx(1.0)


def test_overlapping_blockers_in_a_multi_slot_process_split_the_wait_not_double_it() -> None:
    # Two threads, both busy through the whole 1 s wait: each gets half, not 1 s each.
    found = blame(0, 1000, [run(-50, 1200, "/a", request=1), run(-10, 1100, "/b", request=2)])
    assert [b.overlap_ns for b in found] == [1000 * MS, 1000 * MS]
    assert [b.share_s for b in found] == pytest.approx([0.5, 0.5])


def test_main_blocker_is_the_largest_overlap_first() -> None:
    runs = [
        run(0, 200, "/small", request=1),
        run(200, 900, "/big", request=2),
        run(900, 1000, "/tiny", request=3),
    ]
    found = blame(0, 1000, runs)
    assert [b.run.route for b in found] == ["/big", "/small", "/tiny"]


def test_equal_overlaps_are_ordered_by_start() -> None:
    runs = [run(500, 1000, "/later", request=2), run(0, 500, "/earlier", request=1)]
    assert [b.run.route for b in blame(0, 1000, runs)] == ["/earlier", "/later"]


def test_the_victim_is_never_its_own_blocker() -> None:
    victim_run = Run(VICTIM[0], VICTIM[1], 1000 * MS, 1010 * MS, "/fast", "GET")
    found = blame(100, 1000, [victim_run, run(0, 1000)])
    assert [b.run.request for b in found] == [1]
    # Same request number in another process is somebody else.
    other = Run(2, VICTIM[1], 0, 1000 * MS, "/other-pid", "GET")
    assert [b.run.route for b in blame(100, 1000, [other])] == ["/other-pid"]


def test_runs_outside_the_wait_are_not_blockers() -> None:
    runs = [
        run(0, 100, "/before", request=1),  # ended exactly when the wait began
        run(1000, 1200, "/after", request=2),  # started exactly at the victim's entry
        run(1500, None, "/later-running", request=3),
    ]
    assert blame(100, 1000, runs) == []


def test_a_still_running_blocker_counts_until_now() -> None:
    # exit 0 = running: its run extends to now, past the victim's entry.
    found = blockers(100 * MS, 1000 * MS, VICTIM, [run(0, None)], now_ns=NOW)
    assert found[0].overlap_ns == 900 * MS
    assert found[0].share_s == pytest.approx(0.9)
    # If "now" is inside the wait (the victim entered after the poll's clock read), the
    # running request covers only up to now.
    found = blockers(100 * MS, 1000 * MS, VICTIM, [run(0, None)], now_ns=600 * MS)
    assert found[0].overlap_ns == 500 * MS
    assert found[0].share_s == pytest.approx(0.9)  # still the whole wait, its only blocker


def test_no_wait_no_blockers() -> None:
    assert blame(1000, 1000, [run(0, 2000)]) == []
    assert blame(1000, 900, [run(0, 2000)]) == []


# --- had_free_slot --------------------------------------------------------------------------
def free(start_ms: float, end_ms: float, runs: list[Run], capacity: int, alive_ms: float = 0):
    return had_free_slot(
        int(start_ms * MS), int(end_ms * MS), runs, capacity, NOW, int(alive_ms * MS)
    )


def test_idle_process_had_a_free_slot() -> None:
    assert free(0, 1000, [], 1)


def test_one_run_covering_the_interval_fills_capacity_one_not_two() -> None:
    covering = [run(-100, 1100)]
    assert not free(0, 1000, covering, 1)
    assert free(0, 1000, covering, 2)


def test_two_runs_covering_the_interval_fill_capacity_two() -> None:
    runs = [run(-100, 1100, request=1), run(-50, 1050, request=2)]
    assert not free(0, 1000, runs, 2)
    assert free(0, 1000, runs, 3)


def test_a_gap_between_runs_is_a_free_slot() -> None:
    assert free(0, 1000, [run(-100, 400, request=1), run(450, 1100, request=2)], 1)


def test_a_run_ending_before_the_end_frees_the_slot() -> None:
    assert free(0, 1000, [run(-100, 900)], 1)


def test_a_run_starting_after_the_start_left_the_slot_free_until_then() -> None:
    assert free(0, 1000, [run(100, 1100)], 1)


def test_end_and_start_at_the_same_instant_is_not_a_free_slot() -> None:
    runs = [run(-100, 500, request=1), run(500, 1100, request=2)]
    assert not free(0, 1000, runs, 1)
    # Same with two slots: the third run takes the slot the first frees.
    runs2 = [*runs, run(-100, 1200, request=3)]
    assert not free(0, 1000, runs2, 2)


def test_runs_touching_the_interval_edges_do_not_count() -> None:
    # [start, end): a run that ended at start or began at end never overlapped.
    # (Times start at 100 here: an exit of 0 would mean "still running".)
    assert free(100, 1000, [run(50, 100, request=1), run(1000, 1200, request=2)], 1)


def test_a_still_running_request_keeps_its_slot_busy() -> None:
    assert not free(0, 1000, [run(-100, None)], 1)


def test_capacity_two_with_staggered_runs_never_both_free_then_free() -> None:
    # Slot 1: [-100, 600) then [600, 1100); slot 2: [-100, 300) and nothing after: free.
    runs = [run(-100, 600, request=1), run(600, 1100, request=2), run(-100, 300, request=3)]
    assert free(0, 1000, runs, 2)


def test_a_process_created_after_the_wait_began_offers_only_its_lifetime() -> None:
    # Busy from its first instant: it never had a free slot during the wait.
    assert not free(0, 1000, [run(500, 1100)], 1, alive_ms=500)
    # Without the birth time, [0, 500) would look free.
    assert free(0, 1000, [run(500, 1100)], 1)
    # Born after the wait ended: nothing to offer at all.
    assert not free(0, 1000, [], 1, alive_ms=1000)
    assert not free(0, 1000, [], 1, alive_ms=2000)
    # Born during the wait and idle: free.
    assert free(0, 1000, [], 1, alive_ms=400)


def test_empty_interval_has_no_free_slot() -> None:
    assert not free(500, 500, [], 4)
