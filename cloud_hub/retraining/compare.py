"""Judging a candidate against the current model, and a promoted model against its past (pure).

The capture is the machine's new normal: every flag a model raises on it is a false alarm.
The reference is the healthy data the current model stood for: a candidate must not flag more
of it than the current model does. False-alarm rate (FAR) here is the share of readings the
model's alarm rule (schemas.alarm, as the node applies it) leaves flagged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from cloud_hub.models.trainer import DEFAULTS, TrainConfig
from schemas.alarm import AlarmSpec, apply
from schemas.manifest import Manifest

F32 = NDArray[np.float32]


@dataclass(frozen=True, slots=True)
class Limits:
    """Acceptance limits (``[retrain_loop]`` max_far_held_back, max_far_increase)."""

    max_far_held_back: float
    max_far_increase: float


@dataclass(frozen=True, slots=True)
class Comparison:
    """Both models' FAR on the held-back capture and on the current model's reference."""

    current_held_back: float
    candidate_held_back: float
    current_reference: float
    candidate_reference: float
    held_back_readings: int
    reference_readings: int

    def figures(self) -> dict[str, float]:
        """As a flat dict for the loop's table and the ledger."""
        return {f"far_{k}" if "readings" not in k else k: float(v) for k, v in self._items()}

    def _items(self) -> list[tuple[str, float]]:
        return [(f.name, getattr(self, f.name)) for f in dataclasses.fields(self)]


def split(values: F32, held_back: float) -> tuple[F32, F32]:
    """The first ``1 - held_back`` of the readings to train on, and the rest (time order)."""
    if not 0.0 < held_back < 1.0:
        raise ValueError(f"held_back must be in (0, 1), got {held_back}")
    cut = round(len(values) * (1.0 - held_back))
    return values[:cut], values[cut:]


def far(scores: NDArray[np.floating], threshold: float, alarm: AlarmSpec) -> float:
    """Share of readings a node flags with this alarm rule given their ``scores``."""
    if len(scores) == 0:
        raise ValueError("no scores to measure a false-alarm rate on")
    exceed = np.isfinite(scores) & (np.asarray(scores) > threshold)
    return float(apply(alarm, exceed).mean())


def judge(comparison: Comparison, limits: Limits) -> tuple[bool, list[str]]:
    """Whether the candidate may replace the current model, and every reason it may not."""
    reasons: list[str] = []
    c = comparison
    if c.candidate_held_back > limits.max_far_held_back:
        reasons.append(
            f"flags {c.candidate_held_back:.1%} of the held-back readings "
            f"(limit {limits.max_far_held_back:.1%})"
        )
    if c.candidate_reference > c.current_reference + limits.max_far_increase:
        reasons.append(
            f"flags {c.candidate_reference:.1%} of the healthy reference, the current model "
            f"{c.current_reference:.1%} (at most {limits.max_far_increase:.1%} more allowed)"
        )
    return not reasons, reasons


def recipe_of(manifest: Manifest) -> TrainConfig:
    """The training recipe the current model was made with (its family's defaults where the
    manifest does not say)."""
    base = DEFAULTS.get(manifest.algorithm)  # type: ignore[call-overload]
    if base is None:
        where = f"{manifest.name}@{manifest.version}"
        raise ValueError(f"{where}: unknown algorithm {manifest.algorithm!r}")
    facts = manifest.training
    changes: dict[str, object] = {"window": manifest.input.window, "alarm": manifest.alarm}
    for key in ("target_far", "margin", "holdout", "drift_limit"):
        if isinstance(facts.get(key), int | float):
            changes[key] = float(facts[key])
    if facts.get("features") in ("level", "drift", "drift+spread"):
        changes["features"] = facts["features"]
    config: TrainConfig = dataclasses.replace(base, **changes)
    return config


@dataclass(frozen=True, slots=True)
class Counts:
    """A node's reading and flag counters at one moment (the hub's fleet state)."""

    readings: int
    anomalous: int


def flag_rate(start: Counts, end: Counts) -> float | None:
    """Share of readings flagged between two snapshots (None: no readings in between)."""
    readings = end.readings - start.readings
    if readings <= 0:
        return None
    return (end.anomalous - start.anomalous) / readings


def bake_verdict(before: float | None, after: float | None, tolerance: float) -> tuple[bool, str]:
    """Whether the promoted model may stay: its flag rate after the switch is at most the rate
    before it plus ``tolerance``. No readings after the switch is not a pass."""
    if after is None:
        return False, "no readings scored by the new model during the bake time"
    if before is None:
        return True, f"flag rate {after:.2%} after the switch (none measured before)"
    text = f"flag rate {before:.2%} before the switch, {after:.2%} after"
    if after > before + tolerance:
        return False, f"{text}: worse by more than {tolerance:.2%}"
    return True, text
