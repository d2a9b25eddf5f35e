"""A shadow run's figures (pure): each arm's accumulator, the uniform sample its percentiles
come from, and the meter of the candidate's CPU time against wall time."""

from __future__ import annotations

from collections import deque

import numpy as np
import numpy.typing as npt

from schemas import behaviour
from schemas.messages import ArmFigures, ModelRef

F32 = npt.NDArray[np.float32]
Flags = npt.NDArray[np.bool_]

# Scores and latencies kept for percentiles: a uniform sample of the whole run, fixed memory.
SAMPLE_SIZE = 4096


class Reservoir:
    """A uniform random sample of at most ``size`` values from everything added (Algorithm R,
    vectorised per block); the seed makes a run's figures reproducible."""

    def __init__(self, size: int = SAMPLE_SIZE, seed: int = 0) -> None:
        self._values = np.empty(size, np.float64)
        self._kept = 0
        self._seen = 0
        self._rng = np.random.default_rng(seed)

    def add(self, values: npt.ArrayLike) -> None:
        """Offer every value (in order) to the sample."""
        x = np.asarray(values, np.float64).ravel()
        room = min(len(self._values) - self._kept, x.size)
        self._values[self._kept : self._kept + room] = x[:room]
        self._kept += room
        self._seen += room
        rest = x[room:]
        if rest.size == 0:
            return
        # Value number k (0-based, over the whole stream) replaces a random slot with
        # probability size / (k + 1); later values in the block win over earlier ones.
        k = self._seen + np.arange(rest.size)
        slots = (self._rng.random(rest.size) * (k + 1)).astype(np.int64)
        hit = slots < len(self._values)
        self._values[slots[hit]] = rest[hit]
        self._seen += rest.size

    def percentiles(self, qs: list[float]) -> list[float]:
        """The sample's percentiles ``qs`` (0..100); NaN each when nothing was added."""
        if self._kept == 0:
            return [float("nan")] * len(qs)
        return [float(v) for v in np.percentile(self._values[: self._kept], qs)]


class Arm:
    """One model's figures over the readings a shadow run counts."""

    def __init__(self, model: ModelRef, threshold: float) -> None:
        self.model = model
        self.threshold = threshold
        self.readings = 0
        self.flagged = 0
        self.unscored = 0
        self.episodes = 0
        self._sum = 0.0
        self._counts = [0] * behaviour.BINS
        self._scores = Reservoir()
        self._latency = Reservoir(seed=1)
        self._was_flagged = False  # the alarm was open after the last counted reading

    def add(self, scores: F32, flags: Flags, ms: list[float]) -> None:
        """Readings the run counts, in order, and the model's time on each block they came in."""
        self._latency.add(ms)
        if scores.size == 0:
            return
        scored = np.isfinite(scores)
        good = scores[scored]
        self.readings += int(scores.size)
        self.unscored += int(scores.size - good.size)
        self.flagged += int(np.count_nonzero(flags))
        before = np.concatenate([[self._was_flagged], flags[:-1]])
        self.episodes += int(np.count_nonzero(flags & ~before))
        self._was_flagged = bool(flags[-1])
        self._sum += float(good.sum(dtype=np.float64))
        self._counts = behaviour.merge(self._counts, behaviour.ratio_counts(good, self.threshold))
        self._scores.add(good)

    def figures(self) -> ArmFigures:
        """The arm as the report carries it (NaN for a statistic of no readings)."""
        scored = self.readings - self.unscored
        p50, p99 = self._scores.percentiles([50, 99])
        (latency,) = self._latency.percentiles([99])
        return ArmFigures(
            model=self.model,
            threshold=self.threshold,
            readings=self.readings,
            flagged=self.flagged,
            unscored=self.unscored,
            episodes=self.episodes,
            score_mean=self._sum / scored if scored else float("nan"),
            score_p50=p50,
            score_p99=p99,
            score_counts=list(self._counts),
            latency_p99_ms=latency if np.isfinite(latency) else 0.0,
        )


class CpuMeter:
    """Seconds spent on the candidate, in total and over a sliding window of ``window_s``."""

    def __init__(self, started: float, window_s: float) -> None:
        self.started = started
        self.window_s = window_s
        self.total = 0.0
        self._recent: deque[tuple[float, float]] = deque()
        self._in_window = 0.0

    def add(self, now: float, seconds: float) -> None:
        """``seconds`` of candidate work ending at ``now``."""
        self.total += seconds
        self._recent.append((now, seconds))
        self._in_window += seconds
        while self._recent and self._recent[0][0] <= now - self.window_s:
            self._in_window -= self._recent.popleft()[1]

    def share(self, now: float) -> float:
        """Candidate time over the time passed since the run started."""
        elapsed = now - self.started
        return self.total / elapsed if elapsed > 0 else 0.0

    def window_share(self, now: float) -> float | None:
        """Candidate time over the last ``window_s``; None until a whole window has passed."""
        if now - self.started < self.window_s:
            return None
        return max(self._in_window, 0.0) / self.window_s
