"""Dedupe by (node, boot, seq) and gap counting."""

from __future__ import annotations

import random

import pytest

from cloud_hub.ingest.coverage import Coverage
from cloud_hub.ingest.dedupe import Deduper


def test_in_order_stream_is_all_new_and_has_no_gaps() -> None:
    d = Deduper()
    assert all(d.observe("n1", "b1", seq) for seq in range(1000))
    assert d.gaps("n1") == 0
    assert d.duplicates == 0


def test_redelivery_is_a_duplicate_and_counted() -> None:
    d = Deduper()
    assert d.observe("n1", "b1", 0)
    assert d.observe("n1", "b1", 1)
    assert not d.observe("n1", "b1", 1)
    assert not d.observe("n1", "b1", 0)
    assert d.duplicates == 2


def test_out_of_order_arrival_is_new_and_fills_the_gap() -> None:
    d = Deduper()
    for seq in (0, 1, 4, 2):
        assert d.observe("n1", "b1", seq)
    assert d.gaps("n1") == 1  # 3 is missing
    assert d.observe("n1", "b1", 3)
    assert d.gaps("n1") == 0
    assert not d.observe("n1", "b1", 3)


def test_seqs_before_the_first_seen_are_not_gaps_until_an_earlier_one_arrives() -> None:
    d = Deduper()
    d.observe("n1", "b1", 100)
    d.observe("n1", "b1", 101)
    assert d.gaps("n1") == 0
    assert d.observe("n1", "b1", 97)
    assert d.gaps("n1") == 2  # 98 and 99


def test_a_new_boot_starts_a_new_stream_and_gaps_add_up_over_boots() -> None:
    d = Deduper()
    for seq in (0, 1, 2, 5):
        d.observe("n1", "boot-a", seq)
    assert d.observe("n1", "boot-b", 0), "seq 0 of a new boot is new"
    d.observe("n1", "boot-b", 3)
    assert d.gaps("n1") == 2 + 2
    assert not d.observe("n1", "boot-a", 5), "the old boot's seqs are still remembered"


def test_nodes_are_independent() -> None:
    d = Deduper()
    d.observe("n1", "b", 0)
    d.observe("n1", "b", 9)
    assert d.observe("n2", "b", 0)
    assert d.gaps("n1") == 8
    assert d.gaps("n2") == 0
    assert d.gaps("never-seen") == 0


def test_bound_gives_up_the_lowest_hole_and_keeps_it_counted() -> None:
    d = Deduper(max_intervals=3)
    for seq in (0, 2, 4, 6):  # four intervals: one over the bound
        d.observe("n1", "b", seq)
    assert d.gaps("n1") == 3
    assert not d.observe("n1", "b", 1), "a seq in a given-up hole cannot be told from a copy"
    assert d.gaps("n1") == 3, "given-up seqs stay gaps"
    assert d.observe("n1", "b", 3), "holes within the bound are still tracked"
    assert d.gaps("n1") == 2


def test_bound_holds_for_a_long_lossy_stream() -> None:
    rng = random.Random(7)
    seen = [seq for seq in range(20_000) if rng.random() > 0.1]
    c = Coverage(max_intervals=50)
    for seq in seen:
        c.add(seq, seq + 1)
    assert len(c) <= 50
    assert c.missing() == (seen[-1] - seen[0] + 1) - len(seen)


def test_forgotten_boots_keep_their_gaps() -> None:
    d = Deduper(max_boots=2)
    for boot in ("b1", "b2", "b3"):
        d.observe("n1", boot, 0)
        d.observe("n1", boot, 2)
    assert d.gaps("n1") == 3


@pytest.mark.parametrize(
    ("ranges", "expected_new", "holes"),
    [
        ([(0, 10), (5, 15)], [10, 5], 0),
        ([(0, 10), (20, 30)], [10, 10], 10),
        ([(20, 30), (0, 10), (10, 20)], [10, 10, 10], 0),
        ([(0, 10), (20, 30), (5, 25)], [10, 10, 10], 0),
        ([(0, 10), (2, 3)], [10, 0], 0),
        ([(5, 5)], [0], 0),
    ],
)
def test_coverage_counts_newly_covered_integers(
    ranges: list[tuple[int, int]], expected_new: list[int], holes: int
) -> None:
    c = Coverage()
    assert [c.add(a, b) for a, b in ranges] == expected_new
    assert c.holes() == holes


def test_coverage_matches_a_set_on_random_ranges() -> None:
    rng = random.Random(3)
    c, reference = Coverage(), set[int]()
    for _ in range(500):
        a = rng.randrange(0, 2000)
        b = a + rng.randrange(0, 30)
        new = set(range(a, b)) - reference
        assert c.add(a, b) == len(new)
        reference |= new
        assert c.holes() == max(reference) - min(reference) + 1 - len(reference)


@pytest.mark.parametrize("seed", range(5))
def test_coverage_counts_like_a_set_in_order_or_not(seed: int) -> None:
    # In-order ranges take a fast path; shuffled ones the general one: both must count alike.
    rng = random.Random(seed)
    ranges = [(s, s + rng.randint(1, 4)) for s in range(0, 400, 4) if rng.random() < 0.8]
    if seed % 2:
        rng.shuffle(ranges)
    coverage, seen = Coverage(), set[int]()
    for start, end in ranges:
        assert coverage.add(start, end) == len(set(range(start, end)) - seen)
        seen |= set(range(start, end))
        assert all((i in coverage) == (i in seen) for i in range(start - 5, end + 5))
    assert coverage.holes() == max(seen) + 1 - min(seen) - len(seen)


@pytest.mark.parametrize("seed", range(4))
def test_a_stored_coverage_counts_on_as_the_one_it_was_taken_from(seed: int) -> None:
    rng = random.Random(seed)
    live = Coverage(max_intervals=6)
    for _ in range(80):
        start = rng.randrange(0, 300)
        live.add(start, start + rng.randint(1, 5))
    stored = Coverage.of(live.intervals(), live.abandoned, 6)
    assert (stored.intervals(), stored.missing(), len(stored)) == (
        live.intervals(), live.missing(), len(live)
    )  # fmt: skip
    for _ in range(40):
        start = rng.randrange(0, 400)
        assert stored.add(start, start + 3) == live.add(start, start + 3)
        assert stored.intervals() == live.intervals() and stored.missing() == live.missing()


def test_holes_filled_merge_back_into_one_interval() -> None:
    c = Coverage()
    for start in (0, 20, 40, 10, 30):
        c.add(start, start + 10)
    assert c.intervals() == [(0, 50)] and len(c) == 1 and c.holes() == 0
    assert 49 in c and 50 not in c and c.highest() == 49


def test_the_least_recently_observed_boot_is_evicted_and_loaded_back() -> None:
    loads: list[str] = []

    def load(node: str, boot: str) -> Coverage | None:
        loads.append(boot)
        return None

    d = Deduper(max_boots=2, load=load)
    for boot in ("b1", "b2", "b1", "b3"):  # b1 observed again: b2 is the least recent
        d.observe("n1", boot, 0)
    d.take_dirty()  # committed: an evicted stream is the store's from now on
    loads.clear()
    assert not d.observe("n1", "b1", 0) and not d.observe("n1", "b3", 0)
    assert loads == [], "b1 and b3 are in memory"
    assert d.stream("n1", "b2", create=False) is None and loads == ["b2"]
