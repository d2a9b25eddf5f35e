"""Training a detector: features, a detector family, an out-of-sample threshold (numpy only).

A model scores a window of raw readings ``[W, C]`` in three steps, all of which the ONNX graph
(cloud_hub.models.onnx_export) repeats exactly:

1. features (:mod:`cloud_hub.models.features`): per channel its window level, or its slope for
   a channel that drifts while healthy, plus its spread, standardised with robust statistics;
2. a detector family (:mod:`cloud_hub.models.detectors`) turns the features into non-negative
   per-feature terms whose sum is the score;
3. the terms summed per channel are the channel contributions (they add up to the score).

The threshold is chosen out of sample: a model fitted on the first ``1 - holdout`` of the
training readings scores the windows ending in the rest, the threshold is ``margin`` times the
``1 - target_far`` quantile of those scores, and the model is then refitted on all readings.
The alarm rule (schemas.alarm) that turns exceedances into flags is part of the model.

The defaults (:data:`DEFAULTS`, one per family) were chosen by leave-files-out
cross-validation over SKAB valve1 (bench/skab_f1.py): highest F1 with FAR at most 8 % on the
other files, evaluated on files the choice never saw.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from cloud_hub.models.detectors import Autoencoder, Detector, KernelMset, PcaT2Q
from cloud_hub.models.features import FeatureSpec, Mode, fit_spec, sliding_windows, transform
from schemas.alarm import AlarmSpec

__all__ = ["DEFAULTS", "FittedModel", "TrainConfig", "fit", "score_numpy", "sliding_windows"]

Algorithm = Literal["pca", "autoencoder", "mset"]
ALGORITHMS: tuple[Algorithm, ...] = ("pca", "autoencoder", "mset")
MIN_WINDOWS = 30
# A channel whose spread is below float32 resolution of its level carries no information.
_CONSTANT_RTOL = 1e-6

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]


@dataclass(frozen=True)
class TrainConfig:
    """Fitting choices. ``components`` is PCA's kept variance fraction, ``hidden`` the
    autoencoder's bottleneck, ``bandwidth`` and ``memory`` the MSET kernel's width (times the
    median distance) and memory size."""

    algorithm: Algorithm = "pca"
    window: int = 16
    features: Mode = "drift+spread"
    drift_limit: float = 5.0
    components: float = 0.9
    hidden: int = 4
    bandwidth: float = 0.5
    memory: int = 128
    target_far: float = 0.01
    margin: float = 2.0
    holdout: float = 0.3
    alarm: AlarmSpec = field(default_factory=lambda: AlarmSpec(close_after=30))
    seed: int = 0

    def __post_init__(self) -> None:
        checks = [
            (self.algorithm in ALGORITHMS, f"algorithm must be one of {list(ALGORITHMS)}"),
            (self.window >= 2, "window must be >= 2"),
            (self.features in ("level", "drift", "drift+spread"), "features is not a mode"),
            (self.drift_limit > 0, "drift_limit must be > 0"),
            (0.0 < self.components < 1.0, "components must be in (0, 1)"),
            (self.hidden >= 1, "hidden must be >= 1"),
            (self.bandwidth > 0 and self.memory >= 2, "bandwidth must be > 0, memory >= 2"),
            (0.0 < self.target_far < 1.0, "target_far must be in (0, 1)"),
            (self.margin > 0.0, "margin must be > 0"),
            (0.0 < self.holdout < 1.0, "holdout must be in (0, 1)"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(f"{message}, got {self}")

    def threshold_rule(self) -> str:
        """The threshold rule in words, for the model card."""
        return (
            f"{self.margin:g} x the {1 - self.target_far:.0%} quantile of scores on the last "
            f"{self.holdout:.0%} of the training readings (time-ordered, not fitted on)"
        )


DEFAULTS: dict[Algorithm, TrainConfig] = {
    "pca": TrainConfig(),
    "autoencoder": TrainConfig(
        algorithm="autoencoder", alarm=AlarmSpec(open_after=3, open_within=3, close_after=30)
    ),
    "mset": TrainConfig(algorithm="mset", target_far=0.05, margin=1.5, alarm=AlarmSpec()),
}


@dataclass(frozen=True, eq=False)  # arrays have no single truth value to compare by
class FittedModel:
    """Every number the scoring graph needs, plus facts about the fit for the manifest."""

    channels: list[str]
    config: TrainConfig
    spec: FeatureSpec
    detector: Detector
    threshold: float
    training_windows: int

    @property
    def window(self) -> int:
        """Readings per window."""
        return self.config.window

    def feature_names(self) -> list[str]:
        """Readable feature names, e.g. ``slope(temperature)``."""
        return self.spec.names(self.channels)


def fit(values: NDArray[np.floating], channels: list[str], config: TrainConfig) -> FittedModel:
    """Fit on HEALTHY, time-ordered readings ``[n, C]`` with an out-of-sample threshold;
    ValueError naming the problem if the readings cannot make a model."""
    return fit_with_held_out(values, channels, config)[0]


def fit_with_held_out(
    values: NDArray[np.floating], channels: list[str], config: TrainConfig
) -> tuple[FittedModel, F32]:
    """:func:`fit`, plus the held-out scores its threshold came from: the scores that a model
    fitted on the first ``1 - holdout`` of the readings gives the windows ending in the rest."""
    data = _checked(values, channels, config)
    held_out = _held_out_scores(data, channels, config)
    model = _fit_detector(data, channels, config)
    return replace(model, threshold=threshold_of(held_out, config)), held_out


def threshold_of(held_out: NDArray[np.floating], config: TrainConfig) -> float:
    """``margin`` x the ``1 - target_far`` quantile of the held-out scores."""
    return float(np.quantile(held_out, 1.0 - config.target_far)) * config.margin


def score_numpy(model: FittedModel, windows: NDArray[np.floating]) -> tuple[F32, F32]:
    """Scores ``[b]`` and channel contributions ``[b, C]`` of raw windows, as the graph does."""
    x = np.asarray(windows, dtype=np.float32)
    expected = (model.window, len(model.channels))
    if x.ndim != 3 or x.shape[1:] != expected:
        raise ValueError(
            f"windows have shape {list(x.shape)}, expected [batch, {expected[0]}, {expected[1]}]"
        )
    scores, terms = model.detector.score(transform(model.spec, x))
    return scores, (terms @ model.spec.owner_matrix()).astype(np.float32)


def _held_out_scores(data: F64, channels: list[str], config: TrainConfig) -> F32:
    cut = round(len(data) * (1.0 - config.holdout))
    calibration = _fit_detector(data[:cut], channels, config)
    scores, _ = score_numpy(
        calibration, sliding_windows(data[cut - config.window + 1 :], config.window)
    )
    return scores


def _fit_detector(data: F64, channels: list[str], config: TrainConfig) -> FittedModel:
    spec = fit_spec(data, config.window, config.features, config.drift_limit)
    z = transform(spec, sliding_windows(data, config.window))
    detector: Detector
    if config.algorithm == "pca":
        detector = PcaT2Q.fit(z, config.components)
    elif config.algorithm == "autoencoder":
        detector = Autoencoder.fit(z, config.hidden, seed=config.seed)
    else:
        detector = KernelMset.fit(z, memory_size=config.memory, bandwidth=config.bandwidth)
    return FittedModel(list(channels), config, spec, detector, float("nan"), len(z))


def _checked(values: NDArray[np.floating], channels: list[str], config: TrainConfig) -> F64:
    data = np.asarray(values, dtype=np.float64)
    if data.ndim != 2:
        raise ValueError(f"training values must be [n, C], got shape {list(data.shape)}")
    if data.shape[1] != len(channels):
        raise ValueError(f"training values have {data.shape[1]} columns, {len(channels)} channels")
    if len(set(channels)) != len(channels):
        raise ValueError(f"channel names repeat: {channels}")
    # The calibration model, fitted on the first part only, needs enough windows of its own.
    per_part = config.window + max(MIN_WINDOWS, 5 * len(channels)) - 1
    needed = int(np.ceil(per_part / min(config.holdout, 1.0 - config.holdout)))
    if len(data) < needed:
        raise ValueError(
            f"too few training rows: {len(data)}; need at least {needed} for window "
            f"{config.window}, {len(channels)} channels and a {config.holdout:.0%} hold-out"
        )
    bad = ~np.isfinite(data)
    if bad.any():
        rows, cols = np.nonzero(bad)
        raise ValueError(
            f"training values contain {bad.sum()} NaN/inf readings "
            f"(first at row {rows[0]}, channel '{channels[cols[0]]}')"
        )
    _reject_constant(data, channels)
    return data


def _reject_constant(data: F64, channels: list[str]) -> None:
    mean, scale = data.mean(axis=0), data.std(axis=0)
    flat = scale <= _CONSTANT_RTOL * np.maximum(np.abs(mean), 1e-30)
    if flat.any():
        names = [channels[i] for i in np.flatnonzero(flat)]
        raise ValueError(
            f"channels {names} are constant in the training data (std {scale[flat].tolist()}); "
            "drop them or train on data in which they vary"
        )
