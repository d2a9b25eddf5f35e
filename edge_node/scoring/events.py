"""Anomaly episodes from per-reading flags: open after a run of flags, close after a quiet run.

The detector works on runs of equal flags rather than single readings, so a block costs a
Python step per run (long quiet or anomalous stretches are one step each).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

Severity = Literal["warning", "critical"]
TOP_CHANNELS = 3


@dataclass(frozen=True)
class EpisodeConfig:
    """``open_after`` consecutive flags open an episode, ``close_after`` unflagged close it."""

    open_after: int = 3
    close_after: int = 10
    critical_ratio: float = 2.0

    def __post_init__(self) -> None:
        if self.open_after < 1:
            raise ValueError(f"open_after must be >= 1, got {self.open_after}")
        if self.close_after < 1:
            raise ValueError(f"close_after must be >= 1, got {self.close_after}")
        if not self.critical_ratio > 0:
            raise ValueError(f"critical_ratio must be > 0, got {self.critical_ratio}")


@dataclass(frozen=True)
class EpisodeChange:
    """An episode opened or closed; ``channels`` are (name, share) pairs, largest share first."""

    state: Literal["open", "close"]
    episode: int
    started: float
    ended: float | None
    severity: Severity
    peak_score: float
    readings: int
    channels: list[tuple[str, float]]


class _Tally:
    """Running statistics of the flagged readings of a (candidate) episode."""

    def __init__(self, started: float, channels: int) -> None:
        self.started = started
        self.peak = -np.inf
        self.count = 0
        self.contrib = np.zeros(channels, dtype=np.float64)
        self.last_flag = started

    def add(self, peak: float, count: int, contrib: NDArray[np.float64], last: float) -> None:
        self.peak = max(self.peak, peak)
        self.count += count
        self.contrib += contrib
        self.last_flag = last


class EpisodeDetector:
    """Per-model episode state machine; feed it every scored block in order."""

    def __init__(self, config: EpisodeConfig, channels: list[str]) -> None:
        self._config = config
        self._channels = list(channels)
        self._episode = 0
        self._pending: _Tally | None = None  # flagged run that has not opened an episode yet
        self._open: _Tally | None = None
        self._quiet = 0  # unflagged readings since the open episode's last flag
        self._threshold = float("inf")
        self._has_contrib = False

    def update(
        self,
        t0: float,
        period: float,
        scores: ArrayLike,
        flags: ArrayLike,
        contributions: ArrayLike | None,
        *,
        threshold: float,
    ) -> list[EpisodeChange]:
        """Episode changes caused by a block of readings starting at ``t0``."""
        self._threshold = threshold
        self._has_contrib = contributions is not None
        f = np.asarray(flags, dtype=bool)
        flagged, matched = int(np.count_nonzero(f)), np.size(scores) == f.size
        if not flagged and matched and self._pending is None and self._open is None:
            return []  # nothing flagged and nothing under way: no run statistics needed
        if self._open is not None and f.size and flagged == f.size and matched:
            # An open episode flagged throughout the block: one run, added as a whole.
            self._quiet = 0
            self._open.add(*_whole_run(t0, period, scores, contributions, len(self._channels)))
            return []
        block = _Block(
            t0, period, scores, f, contributions=contributions, channels=len(self._channels)
        )
        changes: list[EpisodeChange] = []
        for k, flagged in enumerate(block.flagged):
            if flagged:
                change = self._flagged(block, k)
            else:
                change = self._unflagged(block.stops[k] - block.starts[k])
            if change is not None:
                changes.append(change)
        return changes

    def close(self, now: float) -> EpisodeChange | None:
        """Close an open episode (shutdown, model switch) and forget any pending run.

        ``ended`` is the last flagged reading's timestamp, as for any close; ``now`` is not
        used for it because readings carry their own time and the caller's clock may differ.
        """
        self._pending = None
        self._quiet = 0
        if self._open is None:
            return None
        tally, self._open = self._open, None
        return self._change("close", tally)

    def _flagged(self, block: _Block, k: int) -> EpisodeChange | None:
        if self._open is not None:
            self._quiet = 0
            self._open.add(*block.run_stats(k))
            return None
        start, stop = block.starts[k], block.stops[k]
        if self._pending is None:
            self._pending = _Tally(block.time(start), len(self._channels))
        need = self._config.open_after - self._pending.count
        if stop - start < need:
            self._pending.add(*block.run_stats(k))
            return None
        self._pending.add(*block.stats(start, start + need))
        self._episode += 1
        self._open, self._pending, self._quiet = self._pending, None, 0
        change = self._change("open", self._open)
        if start + need < stop:
            self._open.add(*block.stats(start + need, stop))
        return change

    def _unflagged(self, length: int) -> EpisodeChange | None:
        self._pending = None
        if self._open is None:
            return None
        self._quiet += length
        if self._quiet < self._config.close_after:
            return None
        tally, self._open = self._open, None
        return self._change("close", tally)

    def _change(self, state: Literal["open", "close"], tally: _Tally) -> EpisodeChange:
        critical = tally.peak >= self._config.critical_ratio * self._threshold
        return EpisodeChange(
            state=state,
            episode=self._episode,
            started=tally.started,
            ended=tally.last_flag if state == "close" else None,
            severity="critical" if critical else "warning",
            peak_score=float(tally.peak),
            readings=tally.count,
            channels=self._top_channels(tally.contrib) if self._has_contrib else [],
        )

    def _top_channels(self, contrib: NDArray[np.float64]) -> list[tuple[str, float]]:
        total = float(contrib.sum())
        if not total > 0:
            return []
        order = np.argsort(-contrib, kind="stable")[:TOP_CHANNELS]
        return [(self._channels[i], float(contrib[i] / total)) for i in order if contrib[i] > 0]


class _Block:
    """One update's arrays, validated, split into runs of equal flags with their statistics."""

    def __init__(
        self,
        t0: float,
        period: float,
        scores: ArrayLike,
        flags: ArrayLike,
        *,
        contributions: ArrayLike | None,
        channels: int,
    ) -> None:
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        f = np.asarray(flags, dtype=bool).reshape(-1)
        if s.shape != f.shape:
            raise ValueError(f"scores has {s.size} readings but flags has {f.size}")
        self.t0, self.period = t0, period
        self.scores = np.where(np.isnan(s), -np.inf, s)  # NaN scores never set the peak
        self.contrib = _contributions(contributions, s.size, channels)
        edges = np.flatnonzero(f[1:] != f[:-1]) + 1 if f.size else np.empty(0, np.int64)
        starts = np.concatenate([[0], edges]).astype(np.int64) if f.size else edges
        self.starts: list[int] = starts.tolist()
        self.stops: list[int] = [*self.starts[1:], int(f.size)]
        self.flagged: list[bool] = f[starts].tolist()
        self.peaks: list[float] = (
            np.maximum.reduceat(self.scores, starts).tolist() if f.size else []
        )
        self.sums = np.add.reduceat(self.contrib, starts, axis=0) if f.size else self.contrib

    def time(self, i: int) -> float:
        return self.t0 + i * self.period

    def run_stats(self, k: int) -> tuple[float, int, NDArray[np.float64], float]:
        """Peak score, count, contribution sums and last timestamp of run ``k``."""
        start, stop = self.starts[k], self.stops[k]
        return self.peaks[k], stop - start, self.sums[k], self.time(stop - 1)

    def stats(self, start: int, stop: int) -> tuple[float, int, NDArray[np.float64], float]:
        """The same statistics for readings ``start .. stop - 1``."""
        peak = float(self.scores[start:stop].max())
        return peak, stop - start, self.contrib[start:stop].sum(axis=0), self.time(stop - 1)


def _whole_run(
    t0: float, period: float, scores: ArrayLike, contributions: ArrayLike | None, channels: int
) -> tuple[float, int, NDArray[np.float64], float]:
    """Peak score, count, contribution sums and last timestamp of a block that is one run
    (what ``_Block.run_stats`` gives for it, in fewer steps)."""
    s = np.asarray(scores).reshape(-1)
    n = s.size
    # The largest score, NaN never setting it: max() gives NaN exactly when there is one.
    peak = float(s.max())
    if math.isnan(peak):
        peak = float(np.where(np.isnan(s), -np.inf, s).max())
    return peak, n, _contribution_sums(contributions, n, channels), t0 + (n - 1) * period


def _contribution_sums(
    contributions: ArrayLike | None, n: int, channels: int
) -> NDArray[np.float64]:
    """``_contributions(...).sum(axis=0)``; when every contribution is finite (the usual
    block: their sums are then finite too) without the pass that zeroes the others."""
    if contributions is None:
        return np.zeros(channels, dtype=np.float64)
    c = np.asarray(contributions)
    if c.shape != (n, channels):
        raise ValueError(f"contributions has shape {c.shape}, expected ({n}, {channels})")
    sums: NDArray[np.float64] = np.abs(c, dtype=np.float64).sum(axis=0)
    if not np.isfinite(sums).all():
        sums = _contributions(c, n, channels).sum(axis=0)
    return sums


def _contributions(contributions: ArrayLike | None, n: int, channels: int) -> NDArray[np.float64]:
    if contributions is None:
        return np.zeros((n, channels), dtype=np.float64)
    c = np.asarray(contributions, dtype=np.float64)
    if c.shape != (n, channels):
        raise ValueError(f"contributions has shape {c.shape}, expected ({n}, {channels})")
    # Shares are of magnitude; a NaN or infinite contribution carries no usable evidence.
    magnitude = np.abs(c)
    out: NDArray[np.float64] = np.where(np.isfinite(magnitude), magnitude, 0.0)
    return out
