"""The scoring path of one node: window -> model -> result batches, episodes, drift.

No I/O of its own: the model is a port (:class:`Scorer`), time comes in as arguments.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from edge_node.batcher import PendingBatch, ResultBatcher
from edge_node.drift import DriftAccumulator, DriftReport
from edge_node.events import EpisodeChange, EpisodeConfig, EpisodeDetector
from edge_node.sources.base import Block
from edge_node.window import Windower
from schemas.manifest import Manifest
from schemas.messages import ModelRef

F32 = npt.NDArray[np.float32]


class Scorer(Protocol):
    """A loaded model (edge_node.runtime.ModelRuntime in production)."""

    @property
    def manifest(self) -> Manifest: ...

    @property
    def ref(self) -> ModelRef: ...

    def score(self, windows: F32) -> tuple[F32, F32 | None]: ...


class ChannelMismatch(ValueError):
    """The source lacks a channel the model needs."""


@dataclass
class Scored:
    """What one block produced."""

    batches: list[PendingBatch] = field(default_factory=list)
    changes: list[EpisodeChange] = field(default_factory=list)
    readings: int = 0
    latency_ms: float = 0.0
    error: str = ""


class Pipeline:
    """Scores blocks of readings with one model and groups the results."""

    def __init__(
        self,
        scorer: Scorer,
        source_channels: list[str],
        batcher: ResultBatcher,
        episodes: EpisodeConfig,
    ) -> None:
        manifest = scorer.manifest
        channels = manifest.input.channels
        missing = [c for c in channels if c not in source_channels]
        if missing:
            raise ChannelMismatch(
                f"model {manifest.name}@{manifest.version} needs channels {missing} "
                f"that the source does not have (it has {source_channels})"
            )
        self.scorer = scorer
        self._columns = [source_channels.index(c) for c in channels]
        fill = np.array([manifest.reference.channels[c].mean for c in channels], np.float32)
        self._windower = Windower(manifest.input.window, fill)
        self._batcher = batcher
        self._drift = DriftAccumulator(manifest.reference, channels)
        self._episodes = EpisodeDetector(episodes, channels)

    def process(self, block: Block, now: float, clock: Callable[[], float]) -> Scored:
        """Score every reading of ``block``; ``clock`` times the model run (seconds)."""
        values = np.ascontiguousarray(block.values[:, self._columns], dtype=np.float32)
        windows = self._windower.push(values).windows
        out = Scored(readings=len(values))
        start = clock()
        try:
            scores, contributions = self.scorer.score(windows)
        # Any model failure is reported and the readings still go out (unscored), never fatal.
        except Exception as exc:
            scores, contributions = np.full(len(values), np.nan, np.float32), None
            out.error = f"inference failed: {type(exc).__name__}: {exc}"
        out.latency_ms = (clock() - start) * 1000.0
        if not out.error and not np.isfinite(scores).all():
            out.error = "model produced NaN or infinite scores"
        threshold = self.scorer.manifest.threshold
        flags = np.isfinite(scores) & (scores > threshold)
        self._drift.add(block.t0, block.period, values, scores, flags)
        out.changes = self._episodes.update(
            block.t0, block.period, scores, flags, contributions, threshold=threshold
        )
        out.batches = self._batcher.add(
            model=self.scorer.ref,
            threshold=threshold,
            t0=block.t0,
            period=block.period,
            scores=scores,
            flags=flags,
            now=now,
        )
        return out

    def flush(self, now: float, force: bool = False) -> list[PendingBatch]:
        """Result batches that are due (all of them with ``force``)."""
        return self._batcher.flush(now, force=force)

    def drift_report(self) -> DriftReport | None:
        return self._drift.report()
