"""Drift statistics of scored readings against the model's reference profile.

Memory is bounded: per channel a histogram and shifted running sums; for the score a
histogram, sums and a systematic sample of at most ``SCORE_SAMPLE_CAP`` scores for the
percentiles (every reading while the interval is short, every 2nd, 4th, ... beyond the cap).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from schemas.manifest import Profile, ReferenceProfile
from schemas.messages import ChannelDrift, ScoreStats

# Floor for both fractions in PSI, so an empty bin contributes a large but finite term.
PSI_EPSILON = 1e-4
SCORE_SAMPLE_CAP = 65_536
# Relative floor for a reference std of 0, so a constant training channel gives a large but
# finite mean shift instead of a division by zero.
STD_FLOOR = 1e-6


def psi(expected: Sequence[float], actual_counts: NDArray[np.int64]) -> float:
    """Population stability index of observed bin counts against expected bin fractions.

    Both fractions are floored at ``PSI_EPSILON``; NaN when no counts were observed.
    """
    counts = np.asarray(actual_counts, dtype=np.float64)
    ref = np.asarray(expected, dtype=np.float64)
    if counts.shape != ref.shape:
        raise ValueError(f"{counts.size} counts for {ref.size} expected fractions")
    total = counts.sum()
    if total <= 0:
        return math.nan
    actual = np.maximum(counts / total, PSI_EPSILON)
    ref = np.maximum(ref, PSI_EPSILON)
    return float(np.sum((actual - ref) * np.log(actual / ref)))


def bin_counts(values: ArrayLike, edges: Sequence[float]) -> NDArray[np.int64]:
    """Counts per bin between ``edges``; the outer bins are open-ended, NaN is not counted.

    Bin ``i`` holds ``edges[i] <= x < edges[i+1]`` except that the first takes everything
    below ``edges[1]`` and the last everything from ``edges[-2]`` up.
    """
    if len(edges) < 2:
        raise ValueError(f"edges needs at least 2 entries, got {len(edges)}")
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    x = x[~np.isnan(x)]
    bins = np.searchsorted(np.asarray(edges[1:-1], dtype=np.float64), x, side="right")
    return np.bincount(bins, minlength=len(edges) - 1).astype(np.int64)


@dataclass(frozen=True)
class DriftReport:
    """Drift of the readings between ``start`` and ``end`` (unix times of the first and last)."""

    start: float
    end: float
    n: int
    channels: list[ChannelDrift]
    score: ScoreStats


class _Moments:
    """Count, mean and std of a stream, summed around a fixed centre for precision."""

    def __init__(self, centre: NDArray[np.float64]) -> None:
        self.centre = centre
        self.count = np.zeros_like(centre)
        self.total = np.zeros_like(centre)
        self.squares = np.zeros_like(centre)

    def add(self, values: NDArray[np.float64]) -> None:
        present = ~np.isnan(values)
        shifted = np.where(present, values - self.centre, 0.0)
        self.count += present.sum(axis=0)
        self.total += shifted.sum(axis=0)
        self.squares += (shifted * shifted).sum(axis=0)

    def mean_std(self) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        with np.errstate(invalid="ignore", divide="ignore"):
            shift = self.total / self.count
            var = np.maximum(self.squares / self.count - shift * shift, 0.0)
        return self.centre + shift, np.sqrt(var)


class _ScoreSample:
    """Every ``stride``-th score of the interval, halving itself when it outgrows the cap."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._parts: list[NDArray[np.float64]] = []
        self._kept = 0
        self._seen = 0
        self._stride = 1

    def add(self, scores: NDArray[np.float64]) -> None:
        part = scores[(-self._seen) % self._stride :: self._stride]
        self._seen += scores.size
        self._parts.append(part)
        self._kept += part.size
        while self._kept > self._cap:
            merged = np.concatenate(self._parts)[::2]
            self._parts, self._kept, self._stride = [merged], merged.size, self._stride * 2

    def values(self) -> NDArray[np.float64]:
        return np.concatenate(self._parts) if self._parts else np.empty(0)


class DriftAccumulator:
    """Accumulates readings and scores between reports; ``report()`` resets it."""

    def __init__(
        self,
        reference: ReferenceProfile,
        channels: list[str],
        *,
        score_cap: int = SCORE_SAMPLE_CAP,
    ) -> None:
        missing = [name for name in channels if name not in reference.channels]
        if missing:
            raise ValueError(f"channel(s) {', '.join(missing)} missing from the reference profile")
        for name, profile in [*reference.channels.items(), ("score", reference.score)]:
            if len(profile.edges) != len(profile.fractions) + 1 or not profile.fractions:
                raise ValueError(
                    f"reference profile {name!r}: {len(profile.edges)} edges for "
                    f"{len(profile.fractions)} fractions (needs one more edge than fractions)"
                )
        self._reference = reference
        self._channels = list(channels)
        self._profiles = [reference.channels[name] for name in channels]
        self._score_cap = score_cap
        self._reset()

    def add(
        self,
        t0: float,
        period: float,
        values: ArrayLike,
        scores: ArrayLike,
        flags: ArrayLike,
    ) -> None:
        """Add a block of readings ``[n, C]`` with their scores and flags (NaN cells ignored)."""
        x = np.asarray(values, dtype=np.float64)
        s = np.asarray(scores, dtype=np.float64).reshape(-1)
        f = np.asarray(flags, dtype=bool).reshape(-1)
        if x.ndim != 2 or x.shape[1] != len(self._channels):
            raise ValueError(f"values have shape {x.shape}, expected [n, {len(self._channels)}]")
        if not x.shape[0] == s.size == f.size:
            raise ValueError(f"{x.shape[0]} readings, {s.size} scores and {f.size} flags")
        n = s.size
        if n == 0:
            return
        if self._n == 0:
            self._start = float(t0)
        self._end = float(t0 + (n - 1) * period)
        self._n += n
        self._flagged += int(f.sum())
        self._moments.add(x)
        for i, profile in enumerate(self._profiles):
            self._counts[i] += bin_counts(x[:, i], profile.edges)
        finite = s[~np.isnan(s)]
        self._score_counts += bin_counts(finite, self._reference.score.edges)
        self._score_sum += float(finite.sum())
        self._scores.add(finite)

    def report(self) -> DriftReport | None:
        """Statistics since the last report, then reset; None if nothing was added."""
        if self._n == 0:
            return None
        means, stds = self._moments.mean_std()
        channels = [
            ChannelDrift(
                channel=name,
                psi=psi(profile.fractions, counts),
                mean_shift_sd=_mean_shift(float(mean), profile),
                mean=float(mean),
                std=float(std),
            )
            for name, profile, counts, mean, std in zip(
                self._channels, self._profiles, self._counts, means, stds, strict=True
            )
        ]
        report = DriftReport(
            start=self._start, end=self._end, n=self._n, channels=channels, score=self._score()
        )
        self._reset()
        return report

    def _score(self) -> ScoreStats:
        sample = self._scores.values()
        p50, p95, p99 = (
            np.percentile(sample, [50, 95, 99]).tolist() if sample.size else [math.nan] * 3
        )
        kept = int(self._score_counts.sum())
        return ScoreStats(
            mean=self._score_sum / kept if kept else math.nan,
            p50=p50,
            p95=p95,
            p99=p99,
            flagged_fraction=self._flagged / self._n,
            psi=psi(self._reference.score.fractions, self._score_counts),
        )

    def _reset(self) -> None:
        self._n = 0
        self._flagged = 0
        self._start = 0.0
        self._end = 0.0
        centre = np.array([p.mean for p in self._profiles], dtype=np.float64)
        self._moments = _Moments(centre)
        self._counts = [np.zeros(len(p.fractions), dtype=np.int64) for p in self._profiles]
        self._score_counts = np.zeros(len(self._reference.score.fractions), dtype=np.int64)
        self._score_sum = 0.0
        self._scores = _ScoreSample(self._score_cap)


def _mean_shift(mean: float, profile: Profile) -> float:
    """(mean - reference mean) in reference stds, with the std floored (see STD_FLOOR)."""
    floor = STD_FLOOR * max(1.0, abs(profile.mean))
    return (mean - profile.mean) / max(profile.std, floor)
