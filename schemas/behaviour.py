"""How a model behaves on a node, in figures both processes compute the same way.

A rollout gate compares a model's behaviour before and after a switch, and a shadow run
compares a candidate with the active model on the same readings. Both use a score histogram
over the score *relative to the model's own threshold* (so models with different score scales
compare), on the fixed edges below, and one stated distance between two such histograms: the
total variation distance, half the sum of absolute differences of the normalised counts (0 for
the same distribution, 1 for disjoint ones).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import numpy.typing as npt

RATIO_EDGES: Final = (0.125, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 4.0, 8.0)
"""Inner edges over score / threshold; bin 0 is below 0.125, the last bin is 8 and over."""

BINS: Final = len(RATIO_EDGES) + 1


def ratio_counts(scores: npt.ArrayLike, threshold: float) -> list[int]:
    """Counts of ``scores / threshold`` in the :data:`BINS` bins; NaN scores are left out.

    A threshold that is not positive and finite puts every scored reading in the last bin:
    such a model flags whatever it sees, and that is how it should compare.
    """
    values = np.asarray(scores, dtype=np.float64).ravel()
    values = values[~np.isnan(values)]
    if not (np.isfinite(threshold) and threshold > 0):
        counts = [0] * BINS
        counts[-1] = int(values.size)
        return counts
    bins = np.searchsorted(np.asarray(RATIO_EDGES), values / threshold, side="right")
    return [int(c) for c in np.bincount(bins, minlength=BINS)]


def merge(a: Sequence[int], b: Sequence[int]) -> list[int]:
    """Bin-wise sum of two histograms (an empty one counts as all zeros)."""
    if not a:
        return list(b)
    if not b:
        return list(a)
    if len(a) != len(b):
        raise ValueError(f"histograms of {len(a)} and {len(b)} bins do not merge")
    return [int(x) + int(y) for x, y in zip(a, b, strict=True)]


def distance(a: Sequence[int], b: Sequence[int]) -> float:
    """Total variation distance between two histograms; NaN when either is empty."""
    if len(a) != len(b):
        raise ValueError(f"histograms of {len(a)} and {len(b)} bins do not compare")
    total_a, total_b = sum(a), sum(b)
    if total_a <= 0 or total_b <= 0:
        return float("nan")
    return 0.5 * sum(abs(x / total_a - y / total_b) for x, y in zip(a, b, strict=True))
