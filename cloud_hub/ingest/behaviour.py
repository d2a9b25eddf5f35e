"""How each watched node's models behave, in time buckets, for the rollout gate (pure).

Only nodes that an active rollout watches are accumulated, so memory stays bounded for any
fleet: per watched node, one small record per (bucket, model version), and buckets older than
the watch's horizon are dropped. Figures come from results (readings, flags, NaN scores, the
score / threshold histogram of :mod:`schemas.behaviour`), events (machine episodes opened),
telemetry (latency p99, errors since the last report) and acks (a ``failed`` ack whose reason
says "rolled back to ..." is a probation rollback). Times are the hub's receive times, so that
nodes compare over the same wall-clock window whatever their clocks say.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from schemas.behaviour import BINS, merge, ratio_counts
from schemas.messages import Ack, Event, ResultBatch, Telemetry
from schemas.packing import unpack_f32, unpack_flags

# A probation rollback's ack reason starts so (edge_node/lifecycle/control.py).
PROBATION_PREFIX = "rolled back to"


@dataclass(slots=True)
class Figures:
    """One node's (or several nodes') behaviour over a window, for one model version."""

    readings: int = 0
    flagged: int = 0
    unscored: int = 0
    counts: list[int] = field(default_factory=lambda: [0] * BINS)
    episodes: int = 0
    latency_sum_ms: float = 0.0  # the sum of the telemetry reports' p99, and their count
    latency_reports: int = 0
    errors: int = 0
    probation_rollbacks: int = 0

    @property
    def flag_rate(self) -> float:
        """Flagged readings over scored ones (NaN before any)."""
        scored = self.readings - self.unscored
        return self.flagged / scored if scored > 0 else math.nan

    @property
    def latency_p99_ms(self) -> float:
        """The mean of the telemetry reports' p99 latency (0 before any): a mean, not the
        maximum, so that one report spanning a model load does not decide alone."""
        return self.latency_sum_ms / self.latency_reports if self.latency_reports else 0.0

    @property
    def unscored_rate(self) -> float:
        """Readings left NaN over all readings (NaN before any)."""
        return self.unscored / self.readings if self.readings > 0 else math.nan

    def add(self, other: Figures) -> None:
        """Add ``other`` into these figures."""
        self.readings += other.readings
        self.flagged += other.flagged
        self.unscored += other.unscored
        self.counts = merge(self.counts, other.counts)
        self.episodes += other.episodes
        self.latency_sum_ms += other.latency_sum_ms
        self.latency_reports += other.latency_reports
        self.errors += other.errors
        self.probation_rollbacks += other.probation_rollbacks

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Figures:
        """Figures from :meth:`as_dict`'s values."""
        return cls(
            readings=int(data.get("readings", 0)),
            flagged=int(data.get("flagged", 0)),
            unscored=int(data.get("unscored", 0)),
            counts=[int(c) for c in data.get("counts", [])] or [0] * BINS,
            episodes=int(data.get("episodes", 0)),
            latency_sum_ms=float(data.get("latency_sum_ms", 0.0)),
            latency_reports=int(data.get("latency_reports", 0)),
            errors=int(data.get("errors", 0)),
            probation_rollbacks=int(data.get("probation_rollbacks", 0)),
        )

    def as_dict(self) -> dict[str, Any]:
        """The figures as plain values (for the rollout store and reports)."""
        return {
            "readings": self.readings,
            "flagged": self.flagged,
            "unscored": self.unscored,
            "counts": list(self.counts),
            "episodes": self.episodes,
            "latency_sum_ms": self.latency_sum_ms,
            "latency_reports": self.latency_reports,
            "errors": self.errors,
            "probation_rollbacks": self.probation_rollbacks,
        }


def merged(parts: Iterable[Figures]) -> Figures:
    """The sum of several figures."""
    total = Figures()
    for part in parts:
        total.add(part)
    return total


@dataclass(slots=True)
class _Watch:
    bucket_s: float
    horizon_s: float
    buckets: dict[tuple[int, str], Figures] = field(default_factory=dict)
    errors_seen: int | None = None  # the node's error total at its last telemetry


class Behaviour:
    """Figures per watched node, model version and time bucket."""

    def __init__(self) -> None:
        self._watches: dict[str, _Watch] = {}

    def watch(self, node: str, horizon_s: float) -> None:
        """Accumulate ``node``'s figures from now on, keeping ``horizon_s`` seconds of them."""
        current = self._watches.get(node)
        if current is None:
            # ~32 buckets per version over the horizon: a bounded record per node.
            self._watches[node] = _Watch(max(0.25, horizon_s / 32), horizon_s)
        else:
            current.horizon_s = max(current.horizon_s, horizon_s)

    def unwatch(self, nodes: Iterable[str]) -> None:
        """Stop accumulating ``nodes`` and drop their figures."""
        for node in nodes:
            self._watches.pop(node, None)

    @property
    def watched(self) -> int:
        """How many nodes are watched."""
        return len(self._watches)

    def observe(self, message: object, now: float) -> None:
        """Take what a newly applied message says about its node (ignored if not watched)."""
        node = getattr(message, "node", None)
        watch = self._watches.get(node) if isinstance(node, str) else None
        if watch is None:
            return
        match message:
            case ResultBatch():
                self._result(watch, message, now)
            case Event(state="open", kind="machine"):
                self._bucket(watch, message.model.version, now).episodes += 1
            case Telemetry():
                self._telemetry(watch, message, now)
            case Ack(status="failed") if message.reason.startswith(PROBATION_PREFIX):
                version = message.model.version if message.model is not None else ""
                self._bucket(watch, version, now).probation_rollbacks += 1
            case _:
                return

    def window(self, node: str, version: str, start: float, end: float) -> Figures:
        """``node``'s figures for model ``version`` in buckets within ``[start, end)``."""
        watch = self._watches.get(node)
        if watch is None:
            return Figures()
        first, last = math.floor(start / watch.bucket_s), math.ceil(end / watch.bucket_s)
        return merged(
            figures
            for (index, v), figures in watch.buckets.items()
            if v == version and first <= index < last
        )

    def versions(self, node: str, start: float, end: float) -> dict[str, Figures]:
        """``node``'s figures within ``[start, end)`` per model version."""
        watch = self._watches.get(node)
        if watch is None:
            return {}
        found = {v for _, v in watch.buckets}
        return {v: self.window(node, v, start, end) for v in sorted(found)}

    def prune(self, now: float) -> None:
        """Drop buckets older than each watch's horizon."""
        for watch in self._watches.values():
            oldest = math.floor((now - watch.horizon_s) / watch.bucket_s)
            for key in [k for k in watch.buckets if k[0] < oldest]:
                del watch.buckets[key]

    def _bucket(self, watch: _Watch, version: str, now: float) -> Figures:
        key = (math.floor(now / watch.bucket_s), version)
        figures = watch.buckets.get(key)
        if figures is None:
            figures = watch.buckets[key] = Figures()
        return figures

    def _result(self, watch: _Watch, batch: ResultBatch, now: float) -> None:
        scores = unpack_f32(batch.scores)
        figures = self._bucket(watch, batch.model.version, now)
        figures.readings += batch.n
        figures.flagged += int(unpack_flags(batch.flags, batch.n).sum())
        figures.unscored += int(np.isnan(scores).sum())
        figures.counts = merge(figures.counts, ratio_counts(scores, batch.threshold))

    def _telemetry(self, watch: _Watch, telemetry: Telemetry, now: float) -> None:
        version = telemetry.model.version if telemetry.model is not None else ""
        figures = self._bucket(watch, version, now)
        figures.latency_sum_ms += telemetry.latency_ms.p99
        figures.latency_reports += 1
        total = sum(telemetry.errors.values())
        if watch.errors_seen is not None and total > watch.errors_seen:
            figures.errors += total - watch.errors_seen
        watch.errors_seen = total
