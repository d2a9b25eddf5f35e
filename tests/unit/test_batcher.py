"""ResultBatcher: size limits, cuts on model/threshold/period/time gaps, age, first indices."""

from __future__ import annotations

import numpy as np
import pytest

from edge_node.scoring.batcher import PendingBatch, ResultBatcher
from schemas.messages import ModelRef

M1 = ModelRef("pump", "1")
M2 = ModelRef("pump", "2")
T0 = 1_700_000_000.0


def add(
    batcher: ResultBatcher,
    n: int,
    t0: float,
    *,
    model: ModelRef = M1,
    threshold: float = 1.0,
    period: float = 1.0,
    now: float = 0.0,
    base: float = 0.0,
) -> list[PendingBatch]:
    scores = base + np.arange(n, dtype=np.float32)
    return batcher.add(
        model=model,
        threshold=threshold,
        t0=t0,
        period=period,
        scores=scores,
        flags=scores % 3 == 0,
        now=now,
    )


def test_big_block_is_split_at_max_readings() -> None:
    batcher = ResultBatcher(max_readings=4, max_age_s=60)
    done = add(batcher, 10, T0)
    assert [(b.first, b.n, b.t0) for b in done] == [(0, 4, T0), (4, 4, T0 + 4)]
    assert done[1].scores.tolist() == [4, 5, 6, 7]
    assert done[1].flags.tolist() == [False, False, True, False]
    assert batcher.pending == 2
    rest = batcher.flush(now=0.0, force=True)
    assert [(b.first, b.n, b.t0, b.scores.tolist()) for b in rest] == [(8, 2, T0 + 8, [8, 9])]
    assert batcher.flush(now=0.0, force=True) == []


def test_contiguous_blocks_join_until_full() -> None:
    batcher = ResultBatcher(max_readings=5, max_age_s=60)
    assert add(batcher, 2, T0) == []
    assert add(batcher, 2, T0 + 2.2, base=2) == []  # within half a period of T0 + 2
    done = add(batcher, 3, T0 + 4, base=4)
    assert len(done) == 1
    assert (done[0].first, done[0].t0, done[0].scores.tolist()) == (0, T0, [0, 1, 2, 3, 4])
    assert done[0].scores.dtype == np.float32 and done[0].flags.dtype == np.bool_
    assert batcher.pending == 2


@pytest.mark.parametrize(
    "change",
    [
        {"model": M2},
        {"threshold": 1.5},
        {"period": 0.5},
        {"t0": T0 + 3.6},  # a gap of more than half a period
        {"t0": T0 + 2.4},  # an overlap of more than half a period
    ],
)
def test_a_change_or_a_gap_cuts_the_batch(change: dict[str, object]) -> None:
    batcher = ResultBatcher(max_readings=100, max_age_s=60)
    add(batcher, 3, T0)
    kwargs: dict[str, object] = {"t0": T0 + 3.0} | change
    done = add(batcher, 2, **kwargs)  # type: ignore[arg-type]
    assert [(b.first, b.n, b.model, b.t0) for b in done] == [(0, 3, M1, T0)]
    (rest,) = batcher.flush(now=0.0, force=True)
    assert rest.first == 3 and rest.n == 2 and rest.t0 == kwargs["t0"]
    assert rest.model == change.get("model", M1)


def test_first_counts_every_reading_since_creation() -> None:
    batcher = ResultBatcher(max_readings=3, max_age_s=60)
    batches: list[PendingBatch] = []
    t0 = T0
    for n, model in [(2, M1), (5, M1), (1, M2), (4, M2)]:
        batches += add(batcher, n, t0, model=model)
        t0 += n
    batches += batcher.flush(now=0.0, force=True)
    assert [(b.first, b.n) for b in batches] == [(0, 3), (3, 3), (6, 1), (7, 3), (10, 2)]
    assert sum(b.n for b in batches) == 12
    assert [b.model for b in batches] == [M1, M1, M1, M2, M2]


def test_age_flushes_an_old_batch() -> None:
    batcher = ResultBatcher(max_readings=100, max_age_s=5.0)
    add(batcher, 2, T0, now=10.0)
    add(batcher, 2, T0 + 2, now=12.0)
    assert batcher.flush(now=14.9) == []
    (old,) = batcher.flush(now=15.0)  # age counts from the first add
    assert old.n == 4
    assert batcher.flush(now=100.0) == []


def test_add_delivers_an_aged_batch_before_starting_anew() -> None:
    batcher = ResultBatcher(max_readings=100, max_age_s=5.0)
    add(batcher, 2, T0, now=0.0)
    done = add(batcher, 2, T0 + 2, now=6.0)
    assert [(b.first, b.n) for b in done] == [(0, 2)]
    assert batcher.pending == 2
    assert batcher.flush(now=10.9) == [] and len(batcher.flush(now=11.0)) == 1


def test_batches_do_not_alias_caller_buffers() -> None:
    batcher = ResultBatcher(max_readings=100, max_age_s=5.0)
    scores = np.array([1.0, 2.0], dtype=np.float32)
    flags = np.array([True, False])
    batcher.add(model=M1, threshold=1.0, t0=T0, period=1.0, scores=scores, flags=flags, now=0.0)
    scores[:] = 9.0
    flags[:] = False
    (batch,) = batcher.flush(now=0.0, force=True)
    assert batch.scores.tolist() == [1.0, 2.0] and batch.flags.tolist() == [True, False]


def test_bad_input_is_refused() -> None:
    with pytest.raises(ValueError, match="max_readings"):
        ResultBatcher(max_readings=0, max_age_s=1.0)
    with pytest.raises(ValueError, match="max_age_s"):
        ResultBatcher(max_readings=1, max_age_s=0.0)
    batcher = ResultBatcher(max_readings=10, max_age_s=1.0)
    with pytest.raises(ValueError, match="scores has 2 readings but flags has 1"):
        batcher.add(
            model=M1, threshold=1.0, t0=T0, period=1.0, scores=[1, 2], flags=[True], now=0.0
        )


def test_first_at_once_sends_the_first_block_alone_then_batches_by_age() -> None:
    batcher = ResultBatcher(max_readings=256, max_age_s=1.0, first_at_once=True)
    first = add(batcher, 1, T0, period=0.02)
    assert [(b.first, b.n, b.t0) for b in first] == [(0, 1, T0)]
    # From the second block on, readings wait for the batch's age as usual.
    assert add(batcher, 1, T0 + 0.02, period=0.02, now=0.02, base=1) == []
    assert add(batcher, 1, T0 + 0.04, period=0.02, now=0.5, base=2) == []
    done = batcher.flush(now=1.02)
    assert [(b.first, b.n, b.scores.tolist()) for b in done] == [(1, 2, [1, 2])]
