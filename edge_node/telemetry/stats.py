"""Telemetry arithmetic: latency percentiles and the power estimate (pure, no I/O)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from schemas.messages import Percentiles


class LatencyWindow:
    """Inference latencies (ms per model run) and readings scored since the last snapshot."""

    def __init__(self) -> None:
        self._ms: list[float] = []
        self.readings = 0

    def add(self, ms: float, readings: int) -> None:
        self._ms.append(ms)
        self.readings += readings

    def snapshot(self) -> tuple[Percentiles, int]:
        """Percentiles and reading count since the last snapshot, then start a new window."""
        readings, self.readings = self.readings, 0
        if not self._ms:
            return Percentiles(0.0, 0.0, 0.0, 0.0), readings
        values = np.asarray(self._ms)
        self._ms = []
        p50, p95, p99 = np.percentile(values, [50, 95, 99])
        return Percentiles(float(p50), float(p95), float(p99), float(values.max())), readings


@dataclass(frozen=True, slots=True)
class PowerModel:
    """Power estimated from CPU use when the board has no energy counter.

    The defaults are a Raspberry Pi 4 B's published figures: about 2.7 W idle and 6.4 W with
    all four cores busy, so about 0.9 W per busy core.
    """

    idle_w: float = 2.7
    per_core_w: float = 0.925

    def watts(self, busy_cores: float) -> float:
        """Board power with ``busy_cores`` cores' worth of this process's CPU use."""
        return self.idle_w + self.per_core_w * max(busy_cores, 0.0)

    @property
    def method(self) -> str:
        return (
            f"model: {self.idle_w:g} W idle + {self.per_core_w:g} W per core busy "
            "with this process (no energy counter on this board)"
        )
