"""Probation of a freshly switched-in model: its first runs decide whether it stays (pure).

A model that loaded and warmed up can still fail on real readings (NaN scores, errors) or be far
slower than its manifest says on this board. The pipeline keeps the previous model for the
first ``runs`` runs and asks :class:`Probation` after each one whether to roll back.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from schemas.manifest import Resources


@dataclass(frozen=True)
class ProbationPolicy:
    """``runs`` runs on probation; roll back when the median run is slower than
    ``latency_factor`` times the manifest's p99 (scaled to the run's readings), where a run
    under ``floor_ms`` never counts as slow (timer noise on tiny blocks)."""

    runs: int = 20
    latency_factor: float = 20.0
    floor_ms: float = 5.0

    def __post_init__(self) -> None:
        if self.runs < 1:
            raise ValueError(f"probation runs must be >= 1, got {self.runs}")
        if not self.latency_factor > 0 or self.floor_ms < 0:
            raise ValueError(
                f"latency_factor must be > 0 and floor_ms >= 0, got "
                f"{self.latency_factor}, {self.floor_ms}"
            )


class Probation:
    """The verdict on one model's first runs."""

    def __init__(self, policy: ProbationPolicy, resources: Resources) -> None:
        self.policy = policy
        # The manifest's p99 is per run of `measured_batch` windows; compare per reading.
        batch = max(resources.measured_batch, 1)
        self._manifest_ms_per_reading = max(resources.latency_ms_p99, 0.0) / batch
        self._ratios: list[float] = []
        self._per_reading: list[float] = []

    @property
    def done(self) -> bool:
        """All probation runs went by without a reason to roll back."""
        return len(self._ratios) >= self.policy.runs

    @property
    def runs(self) -> int:
        return len(self._ratios)

    def judge(self, run_ms: float, readings: int, error: str) -> str | None:
        """Record one run; the reason to roll back, or None to keep the model."""
        if error:
            return error
        if readings <= 0 or self.done:
            return None
        allowed = self.policy.latency_factor * self._manifest_ms_per_reading * readings
        self._ratios.append(run_ms / max(allowed, self.policy.floor_ms))
        self._per_reading.append(run_ms / readings)
        if not self.done or float(np.median(self._ratios)) <= 1.0:
            return None
        return (
            f"latency {float(np.median(self._per_reading)):.3g} ms per reading "
            f"(median of {self.runs} runs), manifest says "
            f"{self._manifest_ms_per_reading:.3g} ms per reading "
            f"(limit {self.policy.latency_factor:g}x, runs under {self.policy.floor_ms:g} ms "
            "never count)"
        )
