"""The scoring path of one node: window -> model -> alarm -> result batches, episodes, drift.

A reading is flagged when the model's alarm rule (schemas.alarm, from its manifest) is open
after it: the flags a node publishes are exactly those the trainer validated.

No I/O of its own: the model is a port (:class:`Scorer`), time comes in as arguments.

A model can be switched between two blocks (:meth:`Pipeline.switch`). The result batcher stays
(it cuts a batch where the model changes, so no batch mixes models and no reading is lost or
scored twice); episodes and drift statistics are per model, so the old model's open episode is
closed and its drift report emitted, and the new model starts fresh with windows primed from
the recent raw readings. For its first runs the new model is on probation: if it fails, the
block it failed on is scored again by the previous model, which takes over again.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import numpy.typing as npt

from edge_node.lifecycle.probation import Probation, ProbationPolicy
from edge_node.scoring.batcher import PendingBatch, ResultBatcher
from edge_node.scoring.drift import DriftAccumulator, DriftReport
from edge_node.scoring.events import EpisodeChange, EpisodeConfig, EpisodeDetector
from edge_node.scoring.validation import Checked, SensorChange, Validator
from edge_node.scoring.window import RecentRows, Windower
from edge_node.sources.base import Block
from schemas.alarm import AlarmFilter
from schemas.drift import finite
from schemas.manifest import Manifest
from schemas.messages import ModelRef

F32 = npt.NDArray[np.float32]
# Raw readings kept for priming a switched-in model: enough for any window up to this long
# (a model with a longer window still starts, its first windows padded).
HISTORY_ROWS = 256


class Scorer(Protocol):
    """A loaded model (edge_node.scoring.runtime.ModelRuntime in production)."""

    @property
    def manifest(self) -> Manifest: ...

    @property
    def ref(self) -> ModelRef: ...

    def score(self, windows: F32) -> tuple[F32, F32 | None]: ...


class Beside(Protocol):
    """A model scoring beside the active one (edge_node.scoring.shadow.ShadowRun)."""

    def observe(
        self,
        block: Block,
        active: Scorer,
        *,
        scores: F32,
        flags: npt.NDArray[np.bool_],
        ms: float,
        now: float,
        clock: Callable[[], float],
    ) -> None: ...


class ChannelMismatch(ValueError):
    """The source lacks a channel the model needs."""


@dataclass(frozen=True)
class ModelChange:
    """An episode of ``model`` opened or closed."""

    model: ModelRef
    threshold: float
    change: EpisodeChange


@dataclass(frozen=True)
class SensorFault:
    """A sensor-fault episode opened or closed while ``model`` was scoring."""

    model: ModelRef
    change: SensorChange


@dataclass(frozen=True)
class ModelDrift:
    """Drift statistics of the readings ``model`` scored since its last report."""

    model: ModelRef
    report: DriftReport


@dataclass(frozen=True)
class RolledBack:
    """The model on probation (switched in under ``tag``) failed; ``restored`` took over."""

    tag: str
    failed: ModelRef
    restored: ModelRef
    reason: str


@dataclass
class Scored:
    """What one block (or one switch) produced."""

    batches: list[PendingBatch] = field(default_factory=list)
    changes: list[ModelChange] = field(default_factory=list)
    sensors: list[SensorFault] = field(default_factory=list)
    drift: list[ModelDrift] = field(default_factory=list)
    readings: int = 0
    latency_ms: float = 0.0
    error: str = ""
    rolled_back: RolledBack | None = None
    passed: str = ""  # tag of the switch whose model passed probation with this block


@dataclass
class _Run:
    values: F32
    scores: F32
    contributions: F32 | None
    ms: float
    error: str
    complete: npt.NDArray[np.bool_]  # windows with no start-up padding in them
    checked: Checked  # sensor checks: faulty cells (imputed for the model), episode changes

    @property
    def sensor_driven(self) -> npt.NDArray[np.bool_]:
        """Readings whose window holds a faulty cell on the channel that drove the score most
        (on any channel when the model gives no contributions): no machine alarm from them."""
        in_window = self.checked.in_window
        if not in_window.any():  # no fault near any reading (the usual block)
            return np.zeros(len(in_window), dtype=bool)
        if self.contributions is None or len(self.contributions) != len(in_window):
            return np.asarray(in_window.any(axis=1), dtype=bool)
        top = np.argmax(finite(np.abs(self.contributions)), axis=1)
        return np.asarray(in_window[np.arange(len(top)), top], dtype=bool)

    @property
    def observed(self) -> F32:
        """The readings as the sensors gave them, NaN where they failed the checks."""
        if self.checked.clean or not self.checked.faulty.any():
            return self.values
        return np.where(self.checked.faulty, np.float32(np.nan), self.values)


class _Lane:
    """One model's view of the stream: its columns, windows, episodes and drift."""

    def __init__(self, scorer: Scorer, source_channels: list[str], episodes: EpisodeConfig) -> None:
        manifest = scorer.manifest
        channels = manifest.input.channels
        missing = [c for c in channels if c not in source_channels]
        if missing:
            raise ChannelMismatch(
                f"model {manifest.name}@{manifest.version} needs channels {missing} "
                f"that the source does not have (it has {source_channels})"
            )
        self.scorer = scorer
        self.columns = [source_channels.index(c) for c in channels]
        # The model reads the source's columns as they come (the usual case): no copy needed.
        self._all_columns = self.columns == list(range(len(source_channels)))
        fill = np.array([manifest.reference.channels[c].mean for c in channels], np.float32)
        self.windower = Windower(manifest.input.window, fill)
        self.drift = DriftAccumulator(manifest.reference, channels, spec=manifest.drift)
        self.episodes = EpisodeDetector(episodes, channels)
        self.alarm = AlarmFilter(manifest.alarm)
        self.validator = Validator(manifest)

    def prime(self, recent: F32) -> None:
        """Feed the windower history it never scored, so the next windows are real ones."""
        rows = recent[max(len(recent) - (self.windower.window - 1), 0) :]
        if len(rows):
            self.windower.push(rows[:, self.columns])

    def run(self, block: Block, clock: Callable[[], float]) -> _Run:
        picked = block.values if self._all_columns else block.values[:, self.columns]
        values = np.ascontiguousarray(picked, dtype=np.float32)
        checked = self.validator.check(block.t0, block.period, values)
        batch = self.windower.push(checked.values)
        windows = batch.windows
        error = ""
        contributions: F32 | None
        start = clock()
        try:
            scores, contributions = self.scorer.score(windows)
        # Any model failure is reported and the readings still go out (unscored), never fatal.
        except Exception as exc:
            scores, contributions = np.full(len(values), np.nan, np.float32), None
            error = f"inference failed: {type(exc).__name__}: {exc}"
        ms = (clock() - start) * 1000.0
        # All finite exactly when their float64 sum is (float32 scores cannot overflow it).
        if not error and not math.isfinite(np.add.reduce(scores, axis=None, dtype=np.float64)):
            error = "model produced NaN or infinite scores"
        return _Run(values, scores, contributions, ms, error, batch.complete, checked)


@dataclass
class _Trial:
    tag: str
    previous: Scorer
    probation: Probation


class Pipeline:
    """Scores blocks of readings with one model at a time and groups the results."""

    def __init__(
        self,
        scorer: Scorer,
        source_channels: list[str],
        batcher: ResultBatcher,
        episodes: EpisodeConfig,
        *,
        history: int = HISTORY_ROWS,
    ) -> None:
        self._source_channels = list(source_channels)
        self._episode_config = episodes
        self._lane = _Lane(scorer, self._source_channels, episodes)
        capacity = max(history, scorer.manifest.input.window)
        self._recent = RecentRows(capacity, len(source_channels))
        self._batcher = batcher
        self._trial: _Trial | None = None
        self.sensor_faults: Counter[str] = Counter()  # "channel:fault" -> readings, all models
        self.shadow: Beside | None = None  # a shadow run's candidate, handed each scored block

    @property
    def scorer(self) -> Scorer:
        """The model scoring now."""
        return self._lane.scorer

    @property
    def source_channels(self) -> list[str]:
        """The source's channels, in its order."""
        return list(self._source_channels)

    @property
    def on_probation(self) -> str:
        """Tag of the switch whose model is on probation, or ""."""
        return "" if self._trial is None else self._trial.tag

    def process(self, block: Block, now: float, clock: Callable[[], float]) -> Scored:
        """Score every reading of ``block``; ``clock`` times the model run (seconds)."""
        out = Scored(readings=block.n)
        run = self._lane.run(block, clock)
        if self._trial is not None:
            run = self._judge(self._trial, run, block, now=now, clock=clock, out=out)
        self._recent.push(block.values)
        out.latency_ms = run.ms
        out.error = run.error
        lane = self._lane
        threshold = lane.scorer.manifest.threshold
        # The model's alarm rule decides the flags. An unscored (NaN) reading is never flagged,
        # and a window still padded at start-up (the node's first readings) cannot raise one.
        exceed = run.complete & (run.scores > threshold)
        if not run.checked.clean and run.checked.in_window.any():  # a fault near some reading
            exceed &= ~run.sensor_driven
        if run.error:  # some readings unscored (every score is finite otherwise)
            scored = np.isfinite(run.scores)
            flags = lane.alarm.update(exceed & scored) & scored
        else:
            flags = lane.alarm.update(exceed)
        if self.shadow is not None:  # after the active model ran: it never waits for the shadow
            self.shadow.observe(
                block, lane.scorer, scores=run.scores, flags=flags, ms=run.ms, now=now, clock=clock
            )
        lane.drift.add(block.t0, block.period, run.observed, run.scores, flags)
        out.sensors += [SensorFault(lane.scorer.ref, c) for c in run.checked.changes]
        if run.checked.counts:
            self.sensor_faults.update(run.checked.counts)
        changes = lane.episodes.update(
            block.t0, block.period, run.scores, flags, run.contributions, threshold=threshold
        )
        out.changes += [ModelChange(lane.scorer.ref, threshold, c) for c in changes]
        out.batches = self._batcher.add(
            model=lane.scorer.ref,
            threshold=threshold,
            t0=block.t0,
            period=block.period,
            scores=run.scores,
            flags=flags,
            now=now,
        )
        return out

    def switch(
        self,
        scorer: Scorer,
        now: float,
        *,
        probation: ProbationPolicy | None = None,
        tag: str = "",
    ) -> Scored:
        """Score with ``scorer`` from the next block on; the old model's open result batch,
        last episode close and drift report come back in the result. With ``probation``, the
        old model stays at hand until the new one has passed its first runs (a switch during
        another model's probation ends that probation: the current model becomes the one to
        fall back to)."""
        lane = self._new_lane(scorer)  # raises ChannelMismatch before anything changes
        # The old model's open batch goes now: its results precede the switch's ack.
        out = Scored(batches=self._batcher.flush(now, force=True))
        previous = self._lane.scorer
        self._retire(now, out)
        self._lane = lane
        self._trial = None
        if probation is not None:
            self._trial = _Trial(tag, previous, Probation(probation, scorer.manifest.resources))
        return out

    def flush(self, now: float, force: bool = False) -> list[PendingBatch]:
        """Result batches that are due (all of them with ``force``)."""
        return self._batcher.flush(now, force=force)

    def drift_report(self) -> DriftReport | None:
        """Drift statistics of the current model since its last report."""
        return self._lane.drift.report()

    def _new_lane(self, scorer: Scorer) -> _Lane:
        lane = _Lane(scorer, self._source_channels, self._episode_config)
        self._recent.grow(scorer.manifest.input.window)
        lane.prime(self._recent.last(self._recent.capacity))
        return lane

    def _retire(self, now: float, out: Scored) -> None:
        """Close the current model's episode and take its drift report (before it goes)."""
        lane = self._lane
        report = lane.drift.report()
        if report is not None:
            out.drift.append(ModelDrift(lane.scorer.ref, report))
        change = lane.episodes.close(now)
        if change is not None:
            threshold = lane.scorer.manifest.threshold
            out.changes.append(ModelChange(lane.scorer.ref, threshold, change))

    def _judge(
        self,
        trial: _Trial,
        run: _Run,
        block: Block,
        *,
        now: float,
        clock: Callable[[], float],
        out: Scored,
    ) -> _Run:
        """Probation: keep the run, or fall back to the previous model and score the block
        again with it (the recent rows do not hold this block yet, so its windows are right)."""
        reason = trial.probation.judge(run.ms, block.n, run.error)
        if reason is None:
            if trial.probation.done:
                out.passed, self._trial = trial.tag, None
            return run
        failed = self._lane.scorer.ref
        self._trial = None
        lane = self._new_lane(trial.previous)
        self._retire(now, out)
        self._lane = lane
        out.rolled_back = RolledBack(trial.tag, failed, lane.scorer.ref, reason)
        return lane.run(block, clock)
