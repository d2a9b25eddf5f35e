"""PCA anomaly detector: fitting, the reference scorer and the reference profile (numpy only).

The model scores a window of raw readings ``[W, C]`` in four steps, all of which the ONNX graph
(cloud_hub.models.onnx_export) repeats exactly:

1. ``m`` = per-channel mean over the window (smooths sensor noise);
2. ``z = (m - mean) / scale`` with the training mean and standard deviation of ``m``;
3. ``y = z @ root`` where ``root`` is the symmetric square root of the combined-index matrix
   ``P diag(1/λ) Pᵀ / k + (I - P Pᵀ) / θ`` (``P``: the ``k`` kept principal axes, ``λ`` their
   variances, ``θ`` the variance left in the residual);
4. ``contributions = y²`` per channel and ``score = Σ contributions``.

So the score is the combined index T²/k + Q/θ, each term about 1 on training data, and its
per-channel terms (the "complete decomposition" of the index) are non-negative and add up to it.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

from schemas.manifest import Profile, ReferenceProfile

ALGORITHM = "pca-t2q"
MIN_WINDOWS = 30
# Below this relative size the residual subspace is numerical noise, not signal.
_RESIDUAL_FLOOR = 1e-9
# A channel whose spread is below float32 resolution of its level carries no information.
_CONSTANT_RTOL = 1e-6

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]


@dataclass(frozen=True)
class TrainConfig:
    """Fitting choices.

    ``components`` is either the fraction of variance the kept axes must explain (a float in
    (0, 1)) or a count (an int >= 1). The threshold is the ``threshold_quantile`` of the
    training scores times ``threshold_margin``: scores of readings the model has seen are
    biased low, and a margin above 1 keeps the false-alarm rate on new healthy data down.
    Defaults were picked from a small grid on SKAB valve1 (window 4/8/16, components
    0.9/0.95/0.99, margin 1/1.5/2) as round values that sit in the flat part of the results.
    """

    window: int = 8
    components: float | int = 0.95
    threshold_quantile: float = 0.995
    threshold_margin: float = 1.5

    def __post_init__(self) -> None:
        if self.window < 1:
            raise ValueError(f"window must be >= 1, got {self.window}")
        if isinstance(self.components, float) and not 0.0 < self.components < 1.0:
            raise ValueError(f"components as a fraction must be in (0, 1), got {self.components}")
        if isinstance(self.components, int) and self.components < 1:
            raise ValueError(f"components as a count must be >= 1, got {self.components}")
        if not 0.0 < self.threshold_quantile < 1.0:
            raise ValueError(f"threshold_quantile must be in (0, 1), got {self.threshold_quantile}")
        if self.threshold_margin <= 0.0:
            raise ValueError(f"threshold_margin must be > 0, got {self.threshold_margin}")


@dataclass(frozen=True, eq=False)  # arrays have no single truth value to compare by
class FittedModel:
    """Every number the scoring graph needs, plus facts about the fit for the manifest."""

    channels: list[str]
    window: int
    mean: F32  # [C] training mean of the window means
    scale: F32  # [C] training std of the window means
    root: F32  # [C, C] symmetric square root of the combined-index matrix
    threshold: float
    components: int
    explained_variance: float
    training_windows: int


def sliding_windows(values: NDArray[np.floating], window: int) -> F32:
    """All windows of consecutive rows, ``[n - window + 1, window, C]`` float32 (a copy)."""
    if values.ndim != 2 or len(values) < window:
        raise ValueError(
            f"need [n >= {window}, C] readings for window {window}, got {list(values.shape)}"
        )
    view = sliding_window_view(values, window, axis=0)  # [n-W+1, C, W]
    return np.ascontiguousarray(view.transpose(0, 2, 1), dtype=np.float32)


def fit(values: NDArray[np.floating], channels: list[str], config: TrainConfig) -> FittedModel:
    """Fit the detector on HEALTHY, time-ordered readings ``[n, C]``; ValueError if unusable."""
    data = _checked(values, channels, config.window)
    windows = sliding_windows(data, config.window)
    features = windows.astype(np.float64).mean(axis=1)
    mean = features.mean(axis=0)
    scale = features.std(axis=0)
    _reject_constant(mean, scale, channels)
    z = (features - mean) / scale
    variances, axes = _principal_axes(z)
    k = _component_count(variances, config.components)
    root = _index_root(variances, axes, k)
    model = FittedModel(
        channels=list(channels),
        window=config.window,
        mean=mean.astype(np.float32),
        scale=scale.astype(np.float32),
        root=root.astype(np.float32),
        threshold=0.0,
        components=k,
        explained_variance=float(variances[:k].sum() / variances.sum()),
        training_windows=len(windows),
    )
    scores, _ = score_numpy(model, windows)
    threshold = float(np.quantile(scores, config.threshold_quantile)) * config.threshold_margin
    return replace(model, threshold=threshold)


def score_numpy(model: FittedModel, windows: NDArray[np.floating]) -> tuple[F32, F32]:
    """Scores ``[b]`` and contributions ``[b, C]`` of raw windows, as the ONNX graph does."""
    x = np.asarray(windows, dtype=np.float32)
    expected = (model.window, len(model.channels))
    if x.ndim != 3 or x.shape[1:] != expected:
        raise ValueError(
            f"windows have shape {list(x.shape)}, expected [batch, {expected[0]}, {expected[1]}]"
        )
    z = (x.mean(axis=1, dtype=np.float32) - model.mean) / model.scale
    y = z @ model.root
    contributions = (y * y).astype(np.float32)
    return contributions.sum(axis=1, dtype=np.float32), contributions


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


def _checked(values: NDArray[np.floating], channels: list[str], window: int) -> F64:
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 2:
        raise ValueError(f"training values must be [n, C], got shape {list(data.shape)}")
    if data.shape[1] != len(channels):
        raise ValueError(f"training values have {data.shape[1]} columns, {len(channels)} channels")
    if len(set(channels)) != len(channels):
        raise ValueError(f"channel names repeat: {channels}")
    needed = window + max(MIN_WINDOWS, 5 * len(channels)) - 1
    if len(data) < needed:
        raise ValueError(
            f"too few training rows: {len(data)}; need at least {needed} for window {window} "
            f"and {len(channels)} channels"
        )
    bad = ~np.isfinite(data)
    if bad.any():
        rows, cols = np.nonzero(bad)
        raise ValueError(
            f"training values contain {bad.sum()} NaN/inf readings "
            f"(first at row {rows[0]}, channel '{channels[cols[0]]}')"
        )
    return data


def _reject_constant(mean: F64, scale: F64, channels: list[str]) -> None:
    flat = scale <= _CONSTANT_RTOL * np.maximum(np.abs(mean), 1e-30)
    if flat.any():
        names = [channels[i] for i in np.flatnonzero(flat)]
        raise ValueError(
            f"channels {names} are constant in the training data (std {scale[flat].tolist()}); "
            "drop them or train on data in which they vary"
        )


def _principal_axes(z: F64) -> tuple[F64, F64]:
    # SVD of the standardised features: rows of vt are the axes, s²/(n-1) their variances.
    _, s, vt = np.linalg.svd(z, full_matrices=False)
    return s**2 / (len(z) - 1), vt.T


def _component_count(variances: F64, components: float | int) -> int:
    rank = int(np.sum(variances > _RESIDUAL_FLOOR * variances[0]))
    if isinstance(components, int):
        return min(components, rank)
    explained = np.cumsum(variances) / variances.sum()
    return min(int(np.searchsorted(explained, components) + 1), rank)


def _index_root(variances: F64, axes: F64, k: int) -> F64:
    kept = axes[:, :k]
    root = kept @ np.diag(1.0 / np.sqrt(variances[:k] * k)) @ kept.T
    theta = float(variances[k:].sum())
    if theta > _RESIDUAL_FLOOR * variances.sum():
        # I - P Pᵀ is a projector, so its square root is itself.
        residual = np.eye(len(axes)) - kept @ kept.T
        root = root + residual / np.sqrt(theta)
    return root
