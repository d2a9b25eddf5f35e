"""Windower: stride-1 windows over a stream, history across blocks, NaN forward-fill."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from numpy.typing import NDArray

from edge_node.scoring.window import RecentRows, Windower

F32 = NDArray[np.float32]


def naive_windows(stream: F32, window: int, fill: F32) -> F32:
    """Reference: loop over readings, fill NaN from the last good value, pad with reading 0."""
    filled = stream.copy()
    last = fill.copy()
    for i in range(len(filled)):
        for c in range(filled.shape[1]):
            if np.isnan(filled[i, c]):
                filled[i, c] = last[c]
            last[c] = filled[i, c]
    out = np.empty((len(filled), window, filled.shape[1]), dtype=np.float32)
    for i in range(len(filled)):
        for k in range(window):
            j = i - (window - 1) + k
            out[i, k] = filled[max(j, 0)]
    return out


def noisy_stream(n: int, channels: int, seed: int) -> F32:
    rng = np.random.default_rng(seed)
    stream = rng.normal(size=(n, channels)).astype(np.float32)
    stream[rng.random((n, channels)) < 0.15] = np.nan
    stream[:4, 1] = np.nan  # channel 1 has no good value at first: it must use `fill`
    return stream


@pytest.mark.parametrize("window", [1, 2, 5, 16])
def test_windows_match_naive_reference_across_blocks(window: int) -> None:
    stream = noisy_stream(120, 3, seed=window)
    fill = np.array([10.0, 20.0, 30.0], dtype=np.float32)
    windower = Windower(window, fill)
    cuts = [0, 1, 2, 9, 9, 40, 41, 100, 120]  # includes an empty block
    parts = [windower.push(stream[a:b]) for a, b in itertools.pairwise(cuts)]
    windows = np.concatenate([p.windows for p in parts])
    imputed = np.concatenate([p.imputed for p in parts])
    np.testing.assert_array_equal(windows, naive_windows(stream, window, fill))
    np.testing.assert_array_equal(imputed, np.isnan(stream).any(axis=1))
    assert windows.dtype == np.float32 and windows.flags.c_contiguous
    assert not np.isnan(windows).any()


def test_first_window_is_padded_with_the_first_reading() -> None:
    windower = Windower(4, np.zeros(2, dtype=np.float32))
    batch = windower.push(np.array([[1.0, np.nan], [2.0, 5.0]], dtype=np.float32))
    assert batch.windows.shape == (2, 4, 2)
    assert batch.windows[0].tolist() == [[1.0, 0.0]] * 4
    assert batch.windows[1].tolist() == [[1.0, 0.0]] * 3 + [[2.0, 5.0]]
    assert batch.imputed.tolist() == [True, False]


def test_nan_is_forward_filled_across_blocks() -> None:
    windower = Windower(2, np.array([-1.0], dtype=np.float32))
    windower.push(np.array([[3.0]], dtype=np.float32))
    batch = windower.push(np.array([[np.nan], [np.nan], [4.0]], dtype=np.float32))
    assert batch.windows[:, :, 0].tolist() == [[3.0, 3.0], [3.0, 3.0], [3.0, 4.0]]
    assert batch.imputed.tolist() == [True, True, False]


def test_windows_do_not_alias_the_history() -> None:
    windower = Windower(3, np.zeros(1, dtype=np.float32))
    first = windower.push(np.array([[1.0], [2.0]], dtype=np.float32))
    kept = first.windows.copy()
    windower.push(np.array([[7.0]], dtype=np.float32))
    np.testing.assert_array_equal(first.windows, kept)


def test_channel_count_mismatch_names_both_counts() -> None:
    windower = Windower(3, np.zeros(8, dtype=np.float32))
    with pytest.raises(ValueError, match="values have 7 channels, the windower expects 8"):
        windower.push(np.zeros((2, 7), dtype=np.float32))
    with pytest.raises(ValueError, match="2-D"):
        windower.push(np.zeros(8, dtype=np.float32))


@pytest.mark.parametrize(
    ("window", "fill", "message"),
    [(0, [1.0], "window must be >= 1"), (3, [1.0, np.nan], "fill must be finite"), (3, [], "fill")],
)
def test_bad_parameters(window: int, fill: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Windower(window, np.array(fill, dtype=np.float32))


def test_windows_are_complete_once_a_whole_window_of_readings_was_seen() -> None:
    windower = Windower(4, [0.0])
    blocks = [windower.push(np.arange(n, dtype=np.float32)[:, None]) for n in (2, 0, 3, 2)]
    complete = np.concatenate([b.complete for b in blocks])
    assert complete.tolist() == [False, False, False, True, True, True, True]


def test_recent_rows_keep_the_last_rows_in_order_through_wraps_and_growth() -> None:
    rng = np.random.default_rng(4)
    recent, seen = RecentRows(5, 2), np.empty((0, 2), np.float32)
    capacity = 5
    for step, n in enumerate([0, 1, 3, 2, 4, 7, 1, 1, 5, 2, 9, 3]):
        block = rng.random((n, 2)).astype(np.float32)
        recent.push(block)
        seen = np.concatenate([seen, block])[-capacity:]
        if step == 6:  # rows already forgotten stay gone
            recent.grow(8)
            capacity = 8
        for k in (0, 1, 3, capacity, capacity + 2):
            np.testing.assert_array_equal(recent.last(k), seen[max(len(seen) - k, 0) :])
    empty = RecentRows(0, 2)
    empty.push(np.ones((3, 2)))
    assert empty.last(4).shape == (0, 2)
