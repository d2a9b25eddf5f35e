"""Validating a training recipe on labelled recordings (SKAB's outlier protocol; numpy only).

Per recording: fit on the first ``train_rows`` readings (healthy by the protocol), score every
later reading with the window that ends at it, turn exceedances into flags with the model's
alarm rule exactly as a node does, and count against the labels. Counts are pooled over the
recordings; there is no point adjustment. The figures judge the recipe (algorithm, features,
threshold rule, alarm), since each recording gets a model of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cloud_hub.models.trainer import TrainConfig, fit, score_numpy, sliding_windows
from schemas.alarm import apply
from schemas.manifest import Validation

TRAIN_ROWS = 400
BoolArray = NDArray[np.bool_]


@dataclass(frozen=True)
class Labelled:
    """One labelled recording: readings ``[n, C]`` and a per-reading anomaly label."""

    name: str
    values: NDArray[np.floating]
    anomaly: BoolArray


@dataclass
class Counts:
    """Pooled confusion counts of flags against labels."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, flags: BoolArray, labels: BoolArray) -> Counts:
        """Count one recording's flags; returns self."""
        self.tp += int(np.sum(flags & labels))
        self.fp += int(np.sum(flags & ~labels))
        self.fn += int(np.sum(~flags & labels))
        self.tn += int(np.sum(~flags & ~labels))
        return self

    def __iadd__(self, other: Counts) -> Counts:
        self.tp, self.fp = self.tp + other.tp, self.fp + other.fp
        self.fn, self.tn = self.fn + other.fn, self.tn + other.tn
        return self

    @property
    def readings(self) -> int:
        """Readings counted."""
        return self.tp + self.fp + self.fn + self.tn

    def f1(self) -> float:
        """SKAB's F1: TP / (TP + (FP + FN) / 2)."""
        return _ratio(self.tp, self.tp + (self.fp + self.fn) / 2)

    def far(self) -> float:
        """False-alarm rate: FP / (FP + TN)."""
        return _ratio(self.fp, self.fp + self.tn)

    def mar(self) -> float:
        """Missed-alarm rate: FN / (FN + TP)."""
        return _ratio(self.fn, self.fn + self.tp)


def protocol(train_rows: int = TRAIN_ROWS) -> str:
    """The protocol's name as the model card states it."""
    return (
        f"per recording: fit on the first {train_rows} readings, score the rest with the "
        "model's alarm rule; counts pooled, no point adjustment"
    )


def flags_of(
    recording: Labelled, config: TrainConfig, channels: list[str], train_rows: int = TRAIN_ROWS
) -> BoolArray:
    """The flags a node running this recording's model raises on its test readings."""
    values = np.asarray(recording.values, dtype=np.float32)
    if len(values) <= train_rows:
        raise ValueError(f"{recording.name}: {len(values)} readings, need more than {train_rows}")
    model = fit(values[:train_rows], channels, config)
    windows = sliding_windows(values[train_rows - model.window + 1 :], model.window)
    scores, _ = score_numpy(model, windows)
    return apply(config.alarm, np.isfinite(scores) & (scores > model.threshold))


def validate(
    recordings: Sequence[Labelled],
    config: TrainConfig,
    channels: list[str],
    train_rows: int = TRAIN_ROWS,
) -> tuple[Validation, dict[str, Counts]]:
    """Pooled figures of ``config`` over ``recordings`` and the counts of each."""
    if not recordings:
        raise ValueError("no labelled recordings to validate on")
    per_file = {
        r.name: Counts().add(flags_of(r, config, channels, train_rows), r.anomaly[train_rows:])
        for r in recordings
    }
    total = Counts()
    for counts in per_file.values():
        total += counts
    summary = Validation(
        protocol=protocol(train_rows),
        files=len(recordings),
        readings=total.readings,
        f1=round(total.f1(), 4),
        far=round(total.far(), 4),
        mar=round(total.mar(), 4),
    )
    return summary, per_file


def _ratio(num: float, den: float) -> float:
    return num / den if den else float("nan")
