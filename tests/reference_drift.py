"""The drift statistics as the node computed them before they were vectorised over columns
(rows in chunks of 128, up to 8 chunks a pass, columns last): kept as the reference that
tests/unit/test_scoring_reference.py holds the node's faster computation to."""

from __future__ import annotations

import math

import numpy as np
from numpy.typing import ArrayLike, NDArray

from edge_node.scoring.drift import (
    SCORE_SAMPLE_CAP,
    STD_FLOOR,
    DriftReport,
    cdf_gaps,
    chi2_sf,
    effective_n,
    psi,
    wasserstein_sd,
)
from schemas.drift import SCORE, Cusum, DriftSpec
from schemas.manifest import Profile, ReferenceProfile
from schemas.messages import ChannelDrift, ScoreStats

F64 = NDArray[np.float64]
CHUNK = 128
CHUNKS = 8
_LARGEST = np.finfo(np.float64).max


class _Binner:
    """Bin counts of every column at once: inner edges padded to one matrix."""

    def __init__(self, profiles: list[Profile]) -> None:
        sizes = [len(p.fractions) for p in profiles]
        widest = max(sizes)
        inner = np.full((len(profiles), max(widest - 1, 1)), np.inf)
        for i, p in enumerate(profiles):
            inner[i, : sizes[i] - 1] = p.edges[1:-1]
        self._inner = inner
        self._offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
        self._total = int(sum(sizes))
        self._splits = np.cumsum(sizes)[:-1]
        # Counting edges by binary search needs them in order (a manifest's always are).
        self._sorted = all(bool(np.all(np.diff(p.edges) >= 0)) for p in profiles)

    def zero(self) -> NDArray[np.int64]:
        return np.zeros(self._total, dtype=np.int64)

    def add(self, x: F64, counts: NDArray[np.int64]) -> None:
        """Add the bin counts of rows ``x`` [..., columns] into the flat ``counts``."""
        x = x.reshape(-1, x.shape[-1])
        if self._sorted:  # a binary search per column: edges at or below each value
            index = np.empty(x.shape, dtype=np.int64)
            for c, inner in enumerate(self._inner):
                index[:, c] = np.searchsorted(inner, x[:, c], side="right")
            index += self._offsets
        else:
            index = (self._inner[None, :, :] <= x[:, :, None]).sum(axis=2) + self._offsets
        index[np.isnan(x)] = self._total  # a spare bin, dropped
        counts += np.bincount(index.ravel(), minlength=self._total + 1)[:-1]

    def split(self, counts: NDArray[np.int64]) -> list[NDArray[np.int64]]:
        return np.split(counts, self._splits)


class _Sums:
    """Count, sum, squares and lag-1 products of each column, around a fixed centre."""

    def __init__(self, centre: F64) -> None:
        self.centre = centre
        zero = np.zeros_like(centre)
        self.count, self.total, self.squares = zero.copy(), zero.copy(), zero.copy()
        self.pairs, self.lagged = zero.copy(), zero.copy()
        self.last = np.full_like(centre, np.nan)

    def add(self, x: F64) -> None:
        """Add consecutive chunks ``x`` [k, n, columns], each summed on its own and the sums
        added in order, so the totals do not depend on how many chunks come per call."""
        y = x - self.centre
        present = ~np.isnan(y)
        y0 = np.where(present, y, 0.0)
        prev = np.empty_like(y)
        prev[:, 1:] = y[:, :-1]
        prev[0, 0] = self.last
        prev[1:, 0] = y[:-1, -1]
        both = present & ~np.isnan(prev)
        # NaN products are masked out below; only infinities need bounding (as nan_to_num).
        bounded = np.minimum(np.maximum(prev, -_LARGEST), _LARGEST)
        chunks = np.stack(
            [
                present.sum(axis=1),
                y0.sum(axis=1),
                (y0 * y0).sum(axis=1),
                both.sum(axis=1),
                np.where(both, y0 * bounded, 0.0).sum(axis=1),
            ],
            dtype=np.float64,
        )
        start = np.stack([self.count, self.total, self.squares, self.pairs, self.lagged])
        # start plus each chunk's sums in turn (add.accumulate adds in order)
        sums = np.add.accumulate(np.concatenate([start[:, None], chunks], axis=1), axis=1)[:, -1]
        self.count, self.total, self.squares, self.pairs, self.lagged = sums
        self.last = y[-1, -1].copy()

    def stats(self) -> tuple[F64, F64, F64]:
        """Mean, std and lag-1 autocorrelation per column (NaN where undefined)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            shift = self.total / self.count
            var = np.maximum(self.squares / self.count - shift * shift, 0.0)
            r = (self.lagged / self.pairs - shift * shift) / var
        return self.centre + shift, np.sqrt(var), r


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


class ReferenceDrift:
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
        self._buffer = np.empty((CHUNK * CHUNKS, len(self._profiles)), dtype=np.float64)
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
        if period != self._period:
            self._flush()
            self._period = period
        if self._n == 0:
            self._start = float(t0)
        self._end = float(t0 + (n - 1) * period)
        self._n += n
        self._flagged += int(f.sum())
        done = 0
        while done < n:
            take = min(len(self._buffer) - self._buffered, n - done)
            rows = slice(self._buffered, self._buffered + take)
            self._buffer[rows, :-1] = x[done : done + take]
            self._buffer[rows, -1] = s[done : done + take]
            self._buffered += take
            done += take
            if self._buffered == len(self._buffer):
                self._flush()

    def report(self) -> DriftReport | None:
        """Statistics since the last report, then reset; None if nothing was added."""
        self._flush()
        if self._n == 0:
            return None
        means, stds, lag1 = self._sums.stats()
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
        """Run the statistics over the buffered rows: whole chunks in one pass, then the rest."""
        if self._buffered == 0:
            return
        x = self._buffer[: self._buffered]
        self._buffered = 0
        whole = len(x) // CHUNK * CHUNK
        if whole:
            self._add_chunks(x[:whole].reshape(-1, CHUNK, x.shape[1]))
        if whole < len(x):
            self._add_chunks(x[whole:][None])

    def _add_chunks(self, x: F64) -> None:
        """``x`` [k, rows, columns]: consecutive chunks of buffered rows."""
        self._sums.add(x)
        self._binner.add(x, self._counts)
        self._cusum.add_chunks((x - self._centre) / self._scale, self._period)
        for score in x[:, :, -1]:
            finite_scores = score[~np.isnan(score)]
            self._score_sum += float(finite_scores.sum())
            self._scores.add(finite_scores)

    def _reset(self) -> None:
        self._n = 0
        self._flagged = 0
        self._start = 0.0
        self._end = 0.0
        self._sums = _Sums(self._centre)
        self._counts = self._binner.zero()
        self._score_sum = 0.0
        self._scores = _ScoreSample(self._score_cap)
        self._cusum.restart_peaks()
