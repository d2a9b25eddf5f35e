"""The reference profile: what healthy data looked like at training time (numpy only).

Nodes compare what they score against it for drift statistics (edge_node.scoring.drift).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from schemas.manifest import Profile, ReferenceProfile


def reference_profile(
    values: NDArray[np.floating], scores: NDArray[np.floating], channels: list[str], bins: int = 10
) -> ReferenceProfile:
    """Per-channel and score distributions of training data: quantile bins, mean and std."""
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 2 or data.shape[1] != len(channels):
        raise ValueError(f"values have shape {list(data.shape)}, expected [n, {len(channels)}]")
    return ReferenceProfile(
        channels={name: profile(data[:, i], bins) for i, name in enumerate(channels)},
        score=profile(np.asarray(scores, dtype=np.float64), bins),
    )


def profile(sample: NDArray[np.floating], bins: int = 10) -> Profile:
    """Quantile-binned histogram of one variable; ties merge bins so edges strictly increase."""
    x = np.asarray(sample, dtype=np.float64)
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError("profile needs a non-empty sample of finite numbers")
    if bins < 1:
        raise ValueError(f"bins must be >= 1, got {bins}")
    edges = np.unique(np.quantile(x, np.linspace(0.0, 1.0, bins + 1)))
    if edges.size == 1:
        edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
    # Outer bins are open-ended (see Profile), so only inner edges decide the bin.
    index = np.searchsorted(edges[1:-1], x, side="right")
    counts = np.bincount(index, minlength=edges.size - 1)
    return Profile(
        mean=float(x.mean()),
        std=float(x.std()),
        edges=[float(e) for e in edges],
        fractions=[float(c) for c in counts / counts.sum()],
    )
