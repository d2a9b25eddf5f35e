"""The drift rule: when a node's change detector says its inputs or score have moved.

Per channel and for the score the node runs a two-sided CUSUM (one-sided, upwards, for the
score) on readings standardised by the model's reference profile, weighted by time so that the
rule reads the same at any sampling rate::

    S+ <- max(0, S+ + (z - k) * dt)      S- <- max(0, S- + (-z - k) * dt)

with ``z = (x - mean) / std`` and ``dt`` the reading period in seconds; ``S`` is in reference
standard deviations x seconds. The detector of a column alarms while ``max(S+, S-) >= h`` for
its threshold ``h``. A drift report carries ``change = peak S / h`` over its interval, so
``change >= 1`` is an alarm and ``change >= watch`` is worth watching.

Thresholds are chosen on healthy data, never on faults: the trainer runs this detector over its
training readings and sets each column's ``h`` to ``margin`` x the largest value it reached
(:func:`fit_thresholds`); bench/drift_calibration.py checks the false-alarm rate that gives on
fresh healthy pumps. This module is the one implementation the trainer and the node share.
"""

from __future__ import annotations

import math
from typing import Annotated, TypeVar

import msgspec
import numpy as np
from numpy.typing import NDArray

F64 = NDArray[np.float64]
FloatT = TypeVar("FloatT", np.float32, np.float64)
Positive = Annotated[float, msgspec.Meta(gt=0)]
SCORE = "score"  # the thresholds' key for the model's score
DEFAULT_MARGIN = 1.5


class DriftSpec(msgspec.Struct, kw_only=True, frozen=True):
    """CUSUM allowance ``k`` (reference SDs); threshold ``h`` (SD x seconds) of each column in
    ``thresholds`` (channel names and ``"score"``), ``default_h`` for any other; ``watch`` is
    the fraction of ``h`` from which the hub reports a node as worth watching."""

    k: Positive = 3.0
    default_h: Positive = 1000.0
    thresholds: dict[str, float] = {}
    watch: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.5

    def __post_init__(self) -> None:
        bad = [name for name, h in self.thresholds.items() if not h > 0]
        if bad:
            raise ValueError(f"drift thresholds must be > 0 (not for {', '.join(bad)})")

    def h(self, column: str) -> float:
        """The threshold of ``column`` (a channel name or ``"score"``)."""
        return self.thresholds.get(column, self.default_h)

    def describe(self) -> str:
        """One line for people."""
        fitted = f", {len(self.thresholds)} fitted thresholds" if self.thresholds else ""
        return f"CUSUM k={self.k:g} SD, h={self.default_h:g} SD*s{fitted}"


def finite(a: NDArray[FloatT]) -> NDArray[FloatT]:
    """``np.nan_to_num(a)`` (NaN to 0, infinities to the largest finite values) in two numpy
    calls: nan_to_num's own Python costs more than the arithmetic on a node's blocks."""
    out: NDArray[FloatT] = np.where(np.isnan(a), a.dtype.type(0), a)
    limit = np.finfo(out.dtype).max
    return np.clip(out, -limit, limit, out=out)


class Cusum:
    """Two-sided, time-weighted CUSUM per column, fed in blocks (vectorised per block).

    ``state`` and ``peak`` are ``[2, columns]``: upward and downward sums, and their largest
    values since :meth:`restart_peaks`.
    """

    def __init__(self, columns: int, k: float) -> None:
        self.k = k
        self.state = np.zeros((2, columns))
        self.peak = np.zeros((2, columns))

    def add(self, z: F64, dt: float) -> None:
        """Standardised readings ``z`` [n, columns] (NaN holds the sums), ``dt`` seconds apart."""
        self.add_chunks(z[None], dt)

    def add_chunks(self, z: F64, dt: float) -> None:
        """``z`` [k, n, columns]: ``k`` consecutive chunks at once, each summed as :meth:`add`
        would (so the result does not depend on how many chunks come per call)."""
        k, n, columns = z.shape
        # Rows last, so the running sums, minima and maxima go along contiguous memory.
        step = np.empty((2, k, columns, n))
        np.subtract(z.transpose(0, 2, 1), self.k, out=step[0])
        np.negative(z.transpose(0, 2, 1), out=step[1])
        step[1] -= self.k
        step = finite(step) * dt
        # S_t = max(0, S_t-1 + d_t) in closed form: C_t - min(-S_0, min_{j<=t} C_j).
        total = np.cumsum(step, axis=3)
        lowest = np.minimum.accumulate(total, axis=3)
        # Each chunk starts from the sums the one before left (a step per chunk, not per row).
        starts = np.empty((2, k, columns))
        state = self.state
        for j in range(k):
            starts[:, j] = state
            state = total[:, j, :, -1] - np.minimum(lowest[:, j, :, -1], -state)
        s = total - np.minimum(lowest, -starts[..., None])
        self.peak = np.maximum(self.peak, s.max(axis=3).max(axis=1))
        self.state = s[:, -1, :, -1]

    def add_columns(self, z: F64, dt: float) -> None:
        """Standardised readings with columns as rows, ``z`` [columns, n]: :meth:`add` without
        its transposes (the node's drift buffer is kept this way)."""
        columns, n = z.shape
        step = np.empty((2, columns, n))
        np.subtract(z, self.k, out=step[0])
        np.subtract(-self.k, z, out=step[1])  # -k - z is -z - k exactly
        # NaN (holds the sums) and infinities need bounding only when there are any: one test.
        if not np.isfinite(z).all():
            step = finite(step)
        step *= dt
        steps = step.reshape(2 * columns, n)
        state, peak = self.state.reshape(-1).copy(), self.peak.reshape(-1).copy()
        # A sum that never rises in the buffer (a healthy column: every reading within k) only
        # falls towards 0: its peak stays, its end is a plain sum. Running sums for the rest.
        rising = (steps > 0).any(axis=1)
        every = bool(rising.all())
        if not every:
            falling = ~rising
            state[falling] = np.maximum(state[falling] + steps[falling].sum(axis=1), 0.0)
        if every or rising.any():
            total = np.cumsum(steps if every else steps[rising], axis=1)
            lowest = np.minimum.accumulate(total, axis=1)
            np.minimum(lowest, -state[rising][:, None], out=lowest)
            s = np.subtract(total, lowest, out=total)
            peak[rising] = np.maximum(peak[rising], s.max(axis=1))
            state[rising] = s[:, -1]
        self.state, self.peak = state.reshape(2, columns), peak.reshape(2, columns)

    def restart_peaks(self) -> None:
        """Peaks from now on (the sums carry on)."""
        self.peak = self.state.copy()


def fit_thresholds(
    z: F64, columns: list[str], period_s: float, k: float, margin: float = DEFAULT_MARGIN
) -> dict[str, float]:
    """Per column, ``margin`` x the largest CUSUM (the score's upwards only, as on the node)
    over healthy standardised readings ``z`` [n, columns] (``columns[-1]`` is the score),
    floored at ``k`` x the column's decorrelation time (at least ten seconds).

    The floor is for slow channels: a quantity that wanders over minutes stays a few SDs out
    for about its decorrelation time when healthy, and a training set of a few hours shows
    only a few such excursions, so its largest CUSUM says little about the next day's.
    """
    if z.ndim != 2 or z.shape[1] != len(columns):
        raise ValueError(f"z has shape {list(z.shape)}, expected [n, {len(columns)}]")
    cusum = Cusum(len(columns), k)
    for start in range(0, len(z), 4096):
        cusum.add(z[start : start + 4096], period_s)
    peak = np.maximum(cusum.peak[0], cusum.peak[1])
    peak[-1] = cusum.peak[0, -1]
    floor = k * np.maximum(decorrelation_s(z, period_s), 10.0)
    return {
        name: max(margin * float(p), float(f))
        for name, p, f in zip(columns, peak, floor, strict=True)
    }


def decorrelation_s(z: F64, period_s: float) -> F64:
    """Per column, the first lag (s) at which the autocorrelation falls below 1/e (FFT; at
    most a quarter of the readings)."""
    n = len(z)
    x = np.nan_to_num(z - np.nanmean(z, axis=0))
    spectrum = np.fft.rfft(x, 2 * n, axis=0)
    acf = np.fft.irfft(np.abs(spectrum) ** 2, axis=0)[: max(n // 4, 2)]
    with np.errstate(invalid="ignore", divide="ignore"):
        acf = acf / acf[0]
    below = acf < math.exp(-1.0)
    lag = np.where(below.any(axis=0), np.argmax(below, axis=0), len(acf))
    out: F64 = lag.astype(np.float64) * period_s
    return out
