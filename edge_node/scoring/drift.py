"""Drift statistics of scored readings against the model's reference profile.

Per channel and for the score, over each report interval: readings per reference bin (fixed
bins, so intervals and nodes merge by adding counts), mean and std, PSI with its null
expectation for the interval's effective sample size, binned KS and Wasserstein distances; and
a CUSUM change detector (schemas.drift) whose state runs across intervals.

Cost: a node at 50 Hz hands blocks of one or two readings, so rows are buffered (up to
``BUFFER_ROWS``, columns as rows so that every pass runs along contiguous memory) and the
statistics run over the buffer in one pass, a fixed handful of numpy calls whatever the channel
count (bench/drift_cost.py). The buffer is flushed when full, at a report and when the period
changes, never at a block boundary, so the numbers do not depend on block sizes. Memory is
bounded: the buffer, per-bin counts, sums, and a systematic sample of at most
``SCORE_SAMPLE_CAP`` scores for the score percentiles.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from schemas.drift import SCORE, Cusum, DriftSpec
from schemas.manifest import Profile, ReferenceProfile
from schemas.messages import ChannelDrift, ScoreStats

F64 = NDArray[np.float64]
# Floor for both fractions in PSI, so an empty bin contributes a large but finite term.
PSI_EPSILON = 1e-4
SCORE_SAMPLE_CAP = 65_536
# Relative floor for a reference std of 0, so a constant training channel gives a large but
# finite mean shift instead of a division by zero.
STD_FLOOR = 1e-6
# Rows buffered before the statistics run over them in one pass.
BUFFER_ROWS = 1024
_LARGEST = np.finfo(np.float64).max


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


def chi2_sf(x: float, dof: int) -> float:
    """P(X >= x) for X chi-square with ``dof`` degrees of freedom (Wilson-Hilferty)."""
    if dof < 1 or not x > 0:
        return 1.0
    a = 2.0 / (9.0 * dof)
    z = ((x / dof) ** (1.0 / 3.0) - (1.0 - a)) / math.sqrt(a)
    return 0.5 * math.erfc(z / math.sqrt(2.0))


def effective_n(n: float, r: float) -> float:
    """Sample size of ``n`` AR(1) readings with lag-1 autocorrelation ``r``, in [1, n]."""
    if n < 1:
        return 0.0
    if not math.isfinite(r):
        return float(n)
    r = min(max(r, 0.0), 1.0)
    return float(min(max(n * (1.0 - r) / (1.0 + r), 1.0), n))


def cdf_gaps(expected: Sequence[float], counts: NDArray[np.int64]) -> F64:
    """Observed minus reference CDF at each inner bin edge."""
    c = np.asarray(counts, dtype=np.float64)
    total = c.sum()
    if total <= 0:
        return np.zeros(max(c.size - 1, 0))
    gaps: F64 = (np.cumsum(c) / total - np.cumsum(np.asarray(expected, np.float64)))[:-1]
    return gaps


def wasserstein_sd(profile: Profile, counts: NDArray[np.int64]) -> float:
    """Wasserstein-1 distance over the inner bins (trapezoid on the CDF gaps), in ref SDs."""
    gaps = np.abs(cdf_gaps(profile.fractions, counts))
    widths = np.diff(np.asarray(profile.edges[1:-1], dtype=np.float64))
    if widths.size == 0:
        return 0.0
    area = float(np.sum(widths * (gaps[:-1] + gaps[1:]) / 2.0))
    return area / max(profile.std, STD_FLOOR * max(1.0, abs(profile.mean)))


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


class _Binner:
    """Bin counts of every column: a value's bin is the number of its column's inner edges at
    or below it, found by a binary search per column when the edges are in order (a manifest's
    always are), else counted one edge at a time over the whole buffer."""

    def __init__(self, profiles: list[Profile]) -> None:
        sizes = [len(p.fractions) for p in profiles]
        widest = max(sizes)
        # NaN pads a column with fewer edges: no value is at or above NaN.
        inner = np.full((len(profiles), max(widest - 1, 1)), np.nan)
        for i, p in enumerate(profiles):
            inner[i, : sizes[i] - 1] = p.edges[1:-1]
        self._edges = [np.ascontiguousarray(inner[:, j : j + 1]) for j in range(inner.shape[1])]
        self._offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)[:, None]
        self._total = int(sum(sizes))
        self._splits = np.cumsum(sizes)[:-1]
        # Edges in order (a manifest's always are): a binary search per column instead.
        self._inner = [np.asarray(p.edges[1:-1], dtype=np.float64) for p in profiles]
        self._sorted = all(bool(np.all(np.diff(e) >= 0)) for e in self._inner)
        self._starts = [int(o) for o in self._offsets[:, 0]]

    def zero(self) -> NDArray[np.int64]:
        return np.zeros(self._total, dtype=np.int64)

    def add(self, x: F64, counts: NDArray[np.int64], gaps: bool = True) -> None:
        """Add the bin counts of ``x`` [columns, rows] into the flat ``counts`` (``gaps``:
        whether any cell may be NaN)."""
        if self._sorted:  # edges at or below a value: where it would go after equal edges
            index = np.empty(x.shape, dtype=np.intp)
            for i, (inner, start) in enumerate(zip(self._inner, self._starts, strict=True)):
                np.add(np.searchsorted(inner, x[i], side="right"), start, out=index[i])
        else:
            index = np.empty(x.shape, dtype=np.intp)
            index[:] = self._offsets
            at_or_above = np.empty(x.shape, dtype=bool)
            for edge in self._edges:
                np.greater_equal(x, edge, out=at_or_above)
                index += at_or_above
        if gaps:
            index[np.isnan(x)] = self._total  # a spare bin, dropped
        counts += np.bincount(index.ravel(), minlength=self._total + 1)[:-1]

    def split(self, counts: NDArray[np.int64]) -> list[NDArray[np.int64]]:
        return np.split(counts, self._splits)


class _Sums:
    """Count, sum, squares and lag-1 products of each column, around a fixed centre."""

    def __init__(self, columns: int) -> None:
        zero = np.zeros(columns)
        self.count, self.total, self.squares = zero.copy(), zero.copy(), zero.copy()
        self.pairs, self.lagged = zero.copy(), zero.copy()
        self.last = np.full(columns, np.nan)

    def add(self, y: F64) -> bool:
        """Add consecutive rows ``y`` [columns, rows], already centred (NaN: missing); True
        if any cell was missing."""
        nan = np.isnan(y)
        gaps = bool(nan.any())
        y0 = np.where(nan, 0.0, y) if gaps else y
        last_nan = np.isnan(self.last)
        # Missing cells are 0 in y0, so their products vanish from the lag-1 sum by themselves.
        squares = np.einsum("ij,ij->i", y0, y0)
        head = y0[:, 0] * np.where(last_nan, 0.0, self.last)
        lagged = np.einsum("ij,ij->i", y0[:, 1:], y0[:, :-1]) + head
        if not np.isfinite(squares).all():  # an infinity: inf * 0 would be NaN, so mask
            lagged = self._lagged_masked(y, y0, nan)
        rows = y.shape[1]
        if gaps:
            unpaired = (nan[:, 1:] | nan[:, :-1]).sum(axis=1) + (nan[:, 0] | last_nan)
            missing = nan.sum(axis=1)
        else:  # no missing cell: only a missing last value of the buffer before unpairs one
            unpaired, missing = last_nan.astype(np.int64), np.zeros(len(y), dtype=np.int64)
        self.count = self.count + (rows - missing)
        self.total = self.total + y0.sum(axis=1)
        self.squares = self.squares + squares
        self.pairs = self.pairs + (rows - unpaired)
        self.lagged = self.lagged + lagged
        self.last = y[:, -1].copy()
        return gaps

    def _lagged_masked(self, y: F64, y0: F64, nan: NDArray[np.bool_]) -> F64:
        prev = np.concatenate([self.last[:, None], y[:, :-1]], axis=1)
        both = ~nan & ~np.isnan(prev)
        bounded = np.minimum(np.maximum(prev, -_LARGEST), _LARGEST)
        out: F64 = np.where(both, y0 * bounded, 0.0).sum(axis=1)
        return out

    def stats(self, centre: F64) -> tuple[F64, F64, F64]:
        """Mean, std and lag-1 autocorrelation per column (NaN where undefined)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            shift = self.total / self.count
            var = np.maximum(self.squares / self.count - shift * shift, 0.0)
            r = (self.lagged / self.pairs - shift * shift) / var
        return centre + shift, np.sqrt(var), r


class _ScoreSample:
    """Every ``stride``-th score of the interval, halving itself when it outgrows the cap."""

    def __init__(self, cap: int) -> None:
        self._cap = cap
        self._parts: list[F64] = []
        self._kept = 0
        self._seen = 0
        self._stride = 1

    def add(self, scores: F64) -> None:
        part = scores[(-self._seen) % self._stride :: self._stride]
        self._seen += scores.size
        self._parts.append(part)
        self._kept += part.size
        while self._kept > self._cap:
            merged = np.concatenate(self._parts)[::2]
            self._parts, self._kept, self._stride = [merged], merged.size, self._stride * 2

    def values(self) -> F64:
        return np.concatenate(self._parts) if self._parts else np.empty(0)


class DriftAccumulator:
    """Accumulates readings and scores between reports; ``report()`` resets the interval's
    statistics (the change detector's state carries on)."""

    def __init__(
        self,
        reference: ReferenceProfile,
        channels: list[str],
        *,
        spec: DriftSpec | None = None,
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
        self._spec = spec or DriftSpec()
        self._channels = list(channels)
        # The score is the last column throughout.
        self._profiles = [reference.channels[name] for name in channels] + [reference.score]
        self._centre = np.array([p.mean for p in self._profiles], dtype=np.float64)
        floors = STD_FLOOR * np.maximum(1.0, np.abs(self._centre))
        self._scale = np.maximum([p.std for p in self._profiles], floors)
        self._binner = _Binner(self._profiles)
        self._cusum = Cusum(len(self._profiles), self._spec.k)
        self._h = np.array([self._spec.h(c) for c in [*self._channels, SCORE]])
        self._score_cap = score_cap
        # Columns as rows: every statistic runs along contiguous memory.
        self._buffer = np.empty((len(self._profiles), BUFFER_ROWS), dtype=np.float64)
        self._buffered = 0
        self._period = 0.0
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
        # Float32 readings and scores are widened as they are copied into the buffer.
        x = np.asarray(values)
        s = np.asarray(scores).reshape(-1)
        if not (x.dtype.kind == "f" and s.dtype.kind == "f"):  # floating, as issubdtype says
            x, s = x.astype(np.float64), s.astype(np.float64)
        f = np.asarray(flags, dtype=bool).reshape(-1)
        if x.ndim != 2 or x.shape[1] != len(self._channels):
            raise ValueError(f"values have shape {x.shape}, expected [n, {len(self._channels)}]")
        if not x.shape[0] == s.size == f.size:
            raise ValueError(f"{x.shape[0]} readings, {s.size} scores and {f.size} flags")
        n = s.size
        if n == 0:
            return
        if period != self._period:
            self._flush()
            self._period = period
        if self._n == 0:
            self._start = float(t0)
        self._end = float(t0 + (n - 1) * period)
        self._n += n
        self._flagged += int(np.count_nonzero(f))
        done = 0
        while done < n:
            take = min(BUFFER_ROWS - self._buffered, n - done)
            rows = slice(self._buffered, self._buffered + take)
            self._buffer[:-1, rows] = x[done : done + take].T
            self._buffer[-1, rows] = s[done : done + take]
            self._buffered += take
            done += take
            if self._buffered == BUFFER_ROWS:
                self._flush()

    def report(self) -> DriftReport | None:
        """Statistics since the last report, then reset; None if nothing was added."""
        self._flush()
        if self._n == 0:
            return None
        means, stds, lag1 = self._sums.stats(self._centre)
        counts = self._binner.split(self._counts)
        change = np.maximum(self._cusum.peak[0], self._cusum.peak[1]) / self._h
        change[-1] = self._cusum.peak[0, -1] / self._h[-1]  # the score: upwards only
        channels = [
            self._channel(i, name, counts[i], (float(means[i]), float(stds[i]), float(lag1[i])))
            for i, name in enumerate(self._channels)
        ]
        for item, c in zip(channels, change[:-1], strict=False):
            item.change, item.alarm = float(c), bool(c >= 1.0)
        report = DriftReport(
            start=self._start,
            end=self._end,
            n=self._n,
            channels=channels,
            score=self._score(counts[-1], float(lag1[-1]), float(change[-1])),
        )
        self._reset()
        return report

    def _channel(
        self, i: int, name: str, counts: NDArray[np.int64], moments: tuple[float, float, float]
    ) -> ChannelDrift:
        """One channel's statistics; ``moments`` are its mean, std and lag-1 autocorrelation."""
        mean, std, r = moments
        profile = self._profiles[i]
        n_eff, raw, null, p = self._psi(profile, counts, r)
        gaps = cdf_gaps(profile.fractions, counts)
        return ChannelDrift(
            channel=name,
            psi=raw,
            mean_shift_sd=(mean - profile.mean) / float(self._scale[i]),
            mean=mean,
            std=std,
            counts=counts.tolist(),
            n_eff=n_eff,
            psi_null=null,
            psi_p=p,
            ks=float(np.abs(gaps).max()) if gaps.size else 0.0,
            wasserstein_sd=wasserstein_sd(profile, counts),
        )

    @staticmethod
    def _psi(
        profile: Profile, counts: NDArray[np.int64], r: float
    ) -> tuple[float, float, float, float]:
        """(n_eff, PSI, its null expectation, p-value) for one column."""
        n = int(counts.sum())
        raw = psi(profile.fractions, counts)
        if n == 0:
            return 0.0, raw, math.nan, 1.0
        n_eff = effective_n(n, r)
        dof = len(profile.fractions) - 1
        return n_eff, raw, dof / n_eff, chi2_sf(n_eff * raw, dof)

    def _score(self, counts: NDArray[np.int64], r: float, change: float) -> ScoreStats:
        sample = self._scores.values()
        p50, p95, p99 = (
            np.percentile(sample, [50, 95, 99]).tolist() if sample.size else [math.nan] * 3
        )
        kept = int(counts.sum())
        n_eff, raw, null, p = self._psi(self._profiles[-1], counts, r)
        gaps = cdf_gaps(self._profiles[-1].fractions, counts)
        return ScoreStats(
            mean=self._score_sum / kept if kept else math.nan,
            p50=p50,
            p95=p95,
            p99=p99,
            flagged_fraction=self._flagged / self._n,
            psi=raw,
            counts=counts.tolist(),
            n_eff=n_eff,
            psi_null=null,
            psi_p=p,
            ks=float(np.abs(gaps).max()) if gaps.size else 0.0,
            change=change,
            alarm=change >= 1.0,
        )

    def _flush(self) -> None:
        """Run the statistics over the buffered rows in one pass."""
        if self._buffered == 0:
            return
        x = self._buffer[:, : self._buffered]
        self._buffered = 0
        y = x - self._centre[:, None]
        gaps = self._sums.add(y)
        self._binner.add(x, self._counts, gaps)
        self._cusum.add_columns(y / self._scale[:, None], self._period)
        score = x[-1]
        finite_scores = score[~np.isnan(score)]
        self._score_sum += float(finite_scores.sum())
        self._scores.add(finite_scores)

    def _reset(self) -> None:
        self._n = 0
        self._flagged = 0
        self._start = 0.0
        self._end = 0.0
        self._sums = _Sums(len(self._profiles))
        self._counts = self._binner.zero()
        self._score_sum = 0.0
        self._scores = _ScoreSample(self._score_cap)
        self._cusum.restart_peaks()
