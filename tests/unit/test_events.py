"""EpisodeDetector: opening, closing, severity, channel shares, block boundaries, speed."""

from __future__ import annotations

import time

import numpy as np
import pytest
from numpy.typing import NDArray

from edge_node.scoring.events import (
    EpisodeChange,
    EpisodeConfig,
    EpisodeDetector,
    _Block,
    _whole_run,
)

CHANNELS = ["a", "b", "c", "d"]
T0 = 1_000.0
THRESHOLD = 1.0


def flags_from(pattern: str) -> NDArray[np.bool_]:
    return np.array([ch == "x" for ch in pattern], dtype=bool)


def run(
    pattern: str,
    *,
    config: EpisodeConfig | None = None,
    scores: NDArray[np.float32] | None = None,
    contributions: NDArray[np.float32] | None = None,
    block: int | None = None,
) -> list[EpisodeChange]:
    """Feed a flag pattern ('x' flagged, '.' not) in blocks of ``block`` readings."""
    flags = flags_from(pattern)
    n = flags.size
    if scores is None:
        scores = np.where(flags, 1.5, 0.2).astype(np.float32)
    detector = EpisodeDetector(config or EpisodeConfig(), CHANNELS)
    step = block or max(n, 1)
    changes: list[EpisodeChange] = []
    for a in range(0, n, step):
        part = None if contributions is None else contributions[a : a + step]
        changes += detector.update(
            T0 + a, 1.0, scores[a : a + step], flags[a : a + step], part, threshold=THRESHOLD
        )
    return changes


def test_opens_after_three_flags_and_closes_after_ten_quiet() -> None:
    changes = run("..xx.xxx..x" + "." * 9 + "x" + "." * 10 + "xx")
    assert [c.state for c in changes] == ["open", "close"]
    opened, closed = changes
    assert (opened.episode, opened.started, opened.ended, opened.readings) == (1, T0 + 5, None, 3)
    # the flag after a 9-reading gap continues the episode; the 10-reading gap closes it
    assert (closed.started, closed.ended, closed.readings) == (T0 + 5, T0 + 20, 5)


def test_episode_numbers_count_up() -> None:
    pattern = ("xxx" + "." * 10) * 3
    changes = run(pattern)
    assert [(c.state, c.episode) for c in changes] == [
        ("open", 1),
        ("close", 1),
        ("open", 2),
        ("close", 2),
        ("open", 3),
        ("close", 3),
    ]


def test_severity_and_peak_follow_the_threshold_ratio() -> None:
    pattern = "xxxx" + "." * 10
    scores = np.array([1.2, 1.1, 1.3, 2.5] + [0.1] * 10, dtype=np.float32)
    opened, closed = run(pattern, scores=scores)
    assert opened.severity == "warning" and opened.peak_score == pytest.approx(1.3)
    assert closed.severity == "critical" and closed.peak_score == pytest.approx(2.5)
    assert closed.readings == 4


def test_channel_shares_rank_the_flagged_readings_contributions() -> None:
    pattern = "xxx." + "." * 10
    contributions = np.zeros((14, 4), dtype=np.float32)
    contributions[:3] = [[1, 2, 0, 1], [1, 2, 0, 1], [0, 4, 0, 0]]
    contributions[3:] = [9, 0, 0, 0]  # unflagged readings do not count
    opened, closed = run(pattern, contributions=contributions)
    assert [name for name, _ in closed.channels] == ["b", "a", "d"]
    shares = dict(closed.channels)
    assert shares["b"] == pytest.approx(8 / 12) and shares["a"] == pytest.approx(2 / 12)
    assert opened.channels == closed.channels
    assert run(pattern)[0].channels == []


def test_a_short_run_never_opens_and_close_discards_it() -> None:
    assert run("xx.xx.xx." + "." * 20) == []
    detector = EpisodeDetector(EpisodeConfig(), CHANNELS)
    detector.update(T0, 1.0, np.ones(2), np.ones(2, bool), None, threshold=THRESHOLD)
    assert detector.close(T0 + 5) is None
    # the pending run was forgotten: one more flag does not complete it
    assert detector.update(T0 + 2, 1.0, [1.0], [True], None, threshold=THRESHOLD) == []


def test_close_ends_an_open_episode_at_its_last_flag() -> None:
    detector = EpisodeDetector(EpisodeConfig(open_after=2), CHANNELS)
    detector.update(T0, 1.0, [2.0, 2.0, 2.0, 0.0], [True, True, True, False], None, threshold=1.0)
    change = detector.close(T0 + 100)
    assert change is not None and change.state == "close"
    assert (change.ended, change.readings, change.severity) == (T0 + 2, 3, "critical")
    assert detector.close(T0 + 200) is None


def random_stream(n: int, seed: int) -> tuple[str, NDArray[np.float32], NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    # bursts: a slowly switching regime makes long runs as well as isolated flags
    regime = np.repeat(rng.random(n // 20 + 1) < 0.3, 20)[:n]
    flags = np.where(regime, rng.random(n) < 0.8, rng.random(n) < 0.05)
    scores = np.where(flags, rng.uniform(1, 3, n), rng.uniform(0, 1, n)).astype(np.float32)
    scores[rng.random(n) < 0.01] = np.nan
    contributions = rng.random((n, 4)).astype(np.float32)
    pattern = "".join("x" if f else "." for f in flags)
    return pattern, scores, contributions


@pytest.mark.parametrize("config", [EpisodeConfig(), EpisodeConfig(open_after=1, close_after=1)])
def test_block_boundaries_do_not_matter(config: EpisodeConfig) -> None:
    pattern, scores, contributions = random_stream(2_000, seed=5)
    whole = run(pattern, config=config, scores=scores, contributions=contributions)
    assert len(whole) > 10
    for block in (1, 7):
        chunked = run(
            pattern, config=config, scores=scores, contributions=contributions, block=block
        )
        assert chunked == whole


def test_hundred_thousand_readings_are_fast() -> None:
    pattern, scores, contributions = random_stream(100_000, seed=9)
    flags = flags_from(pattern)
    detector = EpisodeDetector(EpisodeConfig(), CHANNELS)
    start = time.perf_counter()
    changes = detector.update(T0, 1.0, scores, flags, contributions, threshold=THRESHOLD)
    elapsed = time.perf_counter() - start
    assert len(changes) > 100
    assert elapsed < 0.5, f"100k readings took {elapsed:.3f}s"


def test_bad_input_is_refused() -> None:
    detector = EpisodeDetector(EpisodeConfig(), CHANNELS)
    with pytest.raises(ValueError, match="scores has 2 readings but flags has 3"):
        detector.update(T0, 1.0, [1, 1], [True] * 3, None, threshold=1.0)
    with pytest.raises(ValueError, match=r"contributions has shape \(2, 3\), expected \(2, 4\)"):
        detector.update(T0, 1.0, [1, 1], [True] * 2, np.zeros((2, 3)), threshold=1.0)
    with pytest.raises(ValueError, match="open_after"):
        EpisodeConfig(open_after=0)


def test_a_block_flagged_throughout_adds_what_its_runs_would() -> None:
    # An open episode flagged for a whole block takes a shortcut (no run split, no zeroing
    # pass when every contribution is finite): the same peak, count and sums as the runs.
    rng = np.random.default_rng(5)
    scores = rng.random(64).astype(np.float32)
    contributions = rng.random((64, 3)).astype(np.float32)
    for case in ("plain", "nan score", "bad contributions", "none"):
        s, c = scores.copy(), contributions.copy()
        if case == "nan score":
            s[[0, 7]] = np.nan
        if case == "bad contributions":
            c[3, 1], c[9, 2], c[11, 0] = np.nan, np.inf, -np.inf
        given = None if case == "none" else c
        peak, n, sums, last = _whole_run(10.0, 0.5, s, given, 3)
        block = _Block(10.0, 0.5, s, np.ones(64, bool), contributions=given, channels=3)
        want = block.run_stats(0)
        assert (peak, n, last) == (want[0], want[1], want[3])
        np.testing.assert_array_equal(sums, want[2])
