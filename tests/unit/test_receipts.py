"""Receipts (hub) and the resend clock (node): pure parts of end-to-end delivery."""

from __future__ import annotations

import pytest

from cloud_hub.ingest.coverage import Coverage
from cloud_hub.ingest.dedupe import Deduper
from cloud_hub.ingest.receipts import ReceiptPacer
from edge_node.delivery.resend import ResendClock


def test_receipt_ranges_name_the_first_interval_and_those_just_seen() -> None:
    c = Coverage()
    for start in range(0, 1000, 10):  # 100 intervals [k*10, k*10+5)
        c.add(start, start + 5)
    ranges = c.receipt_ranges([503], limit=4)
    assert ranges[0] == (0, 5)
    assert (500, 505) in ranges
    assert ranges[-1] == (990, 995) and len(ranges) == 4


def test_every_stream_observed_is_due_once_even_for_duplicates() -> None:
    d = Deduper()
    for seq in range(5):
        d.observe("n1", "b1", seq)
    d.observe("n1", "b2", 7)
    assert d.take_due() == {("n1", "b1"): [(0, 5)], ("n1", "b2"): [(7, 8)]}
    assert d.take_due() == {}
    d.observe("n1", "b1", 3)  # a node sending again: it lost the receipt
    assert d.take_due() == {("n1", "b1"): [(0, 5)]}


def test_the_pacer_sends_at_most_one_receipt_per_stream_per_interval() -> None:
    pacer = ReceiptPacer(interval_s=0.5)
    pacer.offer({("n1", "b1"): [(0, 10)]})
    assert pacer.take(100.0) == [(("n1", "b1"), [(0, 10)])]
    pacer.offer({("n1", "b1"): [(0, 20)]})
    pacer.offer({("n1", "b1"): [(0, 30)]})
    assert pacer.take(100.2) == []
    assert pacer.take(100.5) == [(("n1", "b1"), [(0, 30)])]  # the newest ranges, once
    assert pacer.sent == 2


def test_a_limited_take_leaves_the_rest_due_for_the_next_round() -> None:
    pacer = ReceiptPacer(interval_s=0.5)
    pacer.offer({(f"n{i}", "b"): [(0, i + 1)] for i in range(5)})
    first = pacer.take(100.0, limit=2)
    assert [key for key, _ in first] == [("n0", "b"), ("n1", "b")]
    assert pacer.pending == 3
    rest = pacer.take(100.0, limit=10)
    assert [key for key, _ in rest] == [("n2", "b"), ("n3", "b"), ("n4", "b")]
    assert pacer.pending == 0 and pacer.sent == 5


def test_a_stream_waiting_for_its_interval_does_not_hold_back_the_others() -> None:
    pacer = ReceiptPacer(interval_s=5.0)
    pacer.offer({("a", "b"): [(0, 1)]})
    assert pacer.take(0.0, limit=1) == [(("a", "b"), [(0, 1)])]
    pacer.offer({("a", "b"): [(0, 2)]})  # offered first, but waits for its interval
    pacer.offer({("c", "b"): [(0, 3)]})
    assert pacer.take(1.0, limit=1) == [(("c", "b"), [(0, 3)])]
    assert pacer.take(4.9) == []
    assert pacer.take(5.0) == [(("a", "b"), [(0, 2)])]


def test_a_receipt_given_back_goes_at_the_next_take() -> None:
    pacer = ReceiptPacer(interval_s=5.0)
    pacer.offer({("a", "b"): [(0, 1)]})
    [(key, ranges)] = pacer.take(0.0)
    pacer.give_back(key, ranges)  # the transport's queue was full
    assert pacer.pending == 1 and pacer.sent == 0
    assert pacer.take(0.1) == [(("a", "b"), [(0, 1)])]
    assert pacer.sent == 1


def test_resend_waits_for_the_head_then_doubles_its_wait() -> None:
    clock = ResendClock(base_s=10.0, max_s=25.0)
    assert not clock.due(oldest_id=1, last_handed=5, now=0.0)
    assert not clock.due(1, 5, 9.9)
    assert clock.due(1, 5, 10.0)
    assert not clock.due(1, 5, 29.9)
    assert clock.due(1, 5, 30.0)
    assert clock.due(1, 5, 55.0)  # capped at 25 s


def test_resend_starts_over_when_receipts_move_the_head() -> None:
    clock = ResendClock(base_s=10.0, max_s=100.0)
    clock.due(1, 5, 0.0)
    assert clock.due(1, 5, 10.0)
    assert not clock.due(3, 5, 12.0)  # confirmed 1 and 2
    assert not clock.due(3, 5, 21.9)
    assert clock.due(3, 5, 22.0)


def test_nothing_is_resent_while_nothing_handed_waits() -> None:
    clock = ResendClock(base_s=1.0)
    assert not clock.due(None, 0, 0.0)
    assert not clock.due(7, 6, 100.0)  # the oldest was never handed over


def test_resend_bounds_are_checked() -> None:
    with pytest.raises(ValueError, match="resend_s"):
        ResendClock(base_s=0.0)
