"""The reference profile: what healthy data looked like at training time (numpy only).

Nodes compare what they score against it for drift statistics (edge_node.scoring.drift).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from schemas.drift import DEFAULT_MARGIN, SCORE, DriftSpec, fit_thresholds
from schemas.manifest import Profile, ReferenceProfile, SensorSpec

# Relative floor of a reference std, as the node's (edge_node.scoring.drift.STD_FLOOR).
STD_FLOOR = 1e-6
# A sensor is stuck after this many times the longest repeat of one value in training.
STUCK_FACTOR = 3.0


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


def drift_spec(
    values: NDArray[np.floating],
    scores: NDArray[np.floating],
    reference: ReferenceProfile,
    channels: list[str],
    period_s: float,
    *,
    k: float = DriftSpec().k,
    margin: float = DEFAULT_MARGIN,
) -> DriftSpec:
    """The node's drift rule with each column's CUSUM threshold fitted on the training readings
    (``scores[i]`` belongs to the window ending at ``values[len(values) - len(scores) + i]``)."""
    data = np.asarray(values, dtype=np.float64)[len(values) - len(scores) :]
    columns = np.column_stack([data, np.asarray(scores, dtype=np.float64)])
    profiles = [reference.channels[name] for name in channels] + [reference.score]
    mean = np.array([p.mean for p in profiles])
    std = np.maximum([p.std for p in profiles], STD_FLOOR * np.maximum(1.0, np.abs(mean)))
    thresholds = fit_thresholds((columns - mean) / std, [*channels, SCORE], period_s, k, margin)
    return DriftSpec(k=k, thresholds=thresholds)


def sensor_specs(
    values: NDArray[np.floating], channels: list[str], period_s: float | None
) -> dict[str, SensorSpec]:
    """Per channel, a working sensor's stuck time: ``STUCK_FACTOR`` x the longest run of one
    repeated value in training (a few readings for an analog channel, longer for a coarsely
    quantised one); nothing when the period is unknown (the node then checks dropouts only).

    No physical range: training readings do not give one. On SKAB, the valve recordings'
    accelerometer levels lie many training spans away from the anomaly-free recording's, so a
    range from training data would call a changed process a broken sensor. A person who knows
    the sensor's limits can add them (``low``, ``high``) to the manifest.
    """
    if not period_s:
        return {}
    data = np.asarray(values, dtype=np.float64)
    specs: dict[str, SensorSpec] = {}
    for i, name in enumerate(channels):
        x = data[:, i]
        changes = np.flatnonzero(x[1:] != x[:-1])
        bounds = np.concatenate([[-1], changes, [x.size - 1]])
        specs[name] = SensorSpec(stuck_s=STUCK_FACTOR * float(np.diff(bounds).max()) * period_s)
    return specs
