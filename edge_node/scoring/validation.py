"""Readings checked where they enter the model: a broken sensor is not a sick machine.

Per channel, a reading is a sensor fault when it is

- ``dropout``: missing (NaN), on any channel;

and on a channel the manifest describes (``Manifest.sensors``; a model trained before it had
none, and its channels are checked for dropouts only):

- ``range``: outside the channel's physical range, when the manifest gives one;
- ``spike``: inside that range but beyond anything the reference showed (outside the reference's
  smallest and largest training value widened by ``SPIKE_MARGIN`` of their span) *and* a jump of
  more than ``SPIKE_JUMP`` spans from the channel's last good reading. A level that moves out of
  the reference gradually (a drifting process) is the machine's business, not a spike;
- ``stuck``: unchanged for the manifest's ``stuck_s`` seconds or more.

The model scores the block with each faulty cell replaced by the channel's last good value (the
reference mean before there is one), and a reading whose model window holds a faulty cell on
the channel that drove its score most cannot raise a machine alarm (the pipeline masks it): a
stuck or dead sensor imputed as a constant must not look like the machine changing. Drift
statistics get NaN for faulty cells (not counted). Each channel's faults form sensor episodes: one
opens at the first faulty reading and closes after ``close_after_s`` seconds of good readings.

Pure: values in, values out; time comes from the readings' timestamps. Per block the checks are
a few numpy passes over ``[n, channels]``; Python steps only for channels with faults.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from numpy.typing import NDArray

from schemas.manifest import Manifest, SensorSpec

F64 = NDArray[np.float64]
FaultKind = Literal["dropout", "range", "spike", "stuck"]
KINDS: tuple[FaultKind, ...] = ("dropout", "range", "spike", "stuck")
SPIKE_MARGIN = 0.25
SPIKE_JUMP = 1.0
CLOSE_AFTER_S = 10.0


@dataclass(frozen=True)
class SensorChange:
    """A sensor-fault episode on ``channel`` opened or closed (``fault``: its first kind)."""

    state: Literal["open", "close"]
    episode: int
    channel: str
    fault: FaultKind
    started: float
    ended: float | None
    readings: int


@dataclass
class Checked:
    """One block after the checks: ``values`` for the model (faulty cells imputed), ``faulty``
    cells, and the sensor episodes that opened or closed."""

    values: NDArray[np.float32]
    faulty: NDArray[np.bool_]
    in_window: NDArray[np.bool_]  # [n, channels]: a faulty cell in the reading's model window
    changes: list[SensorChange] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)  # "channel:fault" -> readings
    clean: bool = False  # known: no faulty cell in the block nor in any reading's window


@dataclass
class _Open:
    episode: int
    fault: FaultKind
    started: float
    readings: int
    last_fault: float


class Validator:
    """Checks one model's channels block by block; feed it every block in order."""

    def __init__(self, manifest: Manifest, *, close_after_s: float = CLOSE_AFTER_S) -> None:
        channels = manifest.input.channels
        ref = manifest.reference.channels
        self.channels = list(channels)
        sensors = manifest.sensors
        self._low = np.array([_bound(sensors.get(c), "low", -np.inf) for c in channels])
        self._high = np.array([_bound(sensors.get(c), "high", np.inf) for c in channels])
        checked = np.array([c in sensors for c in channels])
        lo = np.array([ref[c].edges[0] for c in channels])
        hi = np.array([ref[c].edges[-1] for c in channels])
        self._spike_low = np.where(checked, lo - SPIKE_MARGIN * (hi - lo), -np.inf)
        self._spike_high = np.where(checked, hi + SPIKE_MARGIN * (hi - lo), np.inf)
        self._jump = SPIKE_JUMP * (hi - lo)
        self._stuck_s = np.array([sensors[c].stuck_s if c in sensors else np.inf for c in channels])
        self._checks_stuck = bool(np.isfinite(self._stuck_s).any())
        # A cell inside both ranges is neither out of range nor beyond the reference.
        self._lower = np.maximum(self._low, self._spike_low)
        self._upper = np.minimum(self._high, self._spike_high)
        # No bound on any channel (a model without sensor specs): only NaN can be faulty.
        self._bounded = bool(np.isfinite(self._lower).any() or np.isfinite(self._upper).any())
        self._close_after_s = close_after_s
        self._window = manifest.input.window
        self._tail = np.zeros((self._window - 1, len(channels)), dtype=bool)
        self._tail_faults = 0  # faulty cells in the tail (0: the tail is all False)
        self._last_good = np.array([ref[c].mean for c in channels], dtype=np.float64)
        self._seen = np.zeros(len(channels), dtype=bool)  # a good reading came on the channel
        self._previous = np.full(len(channels), np.nan)
        self._run = np.zeros(len(channels))  # readings the last value has been seen in a row
        self._open: dict[int, _Open] = {}
        self._episodes = 0

    def check(self, t0: float, period: float, values: NDArray[np.float32]) -> Checked:
        """Check a block ``[n, channels]`` of readings taken every ``period`` s from ``t0``."""
        given = np.asarray(values, dtype=np.float32)
        stuck = self._stuck(given, period)
        counts: Counter[str] = Counter()
        if len(given) and self._all_inside(given) and not (self._checks_stuck and stuck.any()):
            self._seen[:] = True
            if not self._open and not self._tail_faulty:
                # The common case, in a few numpy calls: nothing to impute, mask or report.
                self._last_good = given[-1].astype(np.float64)
                return Checked(given, stuck, stuck, [], counts, clean=True)
        x = given.astype(np.float64)
        masks = self._masks(x, stuck)
        faulty = masks[0] | masks[1] | masks[2] | masks[3]
        self._seen |= (~faulty).any(axis=0)
        if not faulty.any() and not self._open and not self._tail_faulty:
            self._last_good = x[-1].copy()
            return Checked(given, faulty, faulty, [], counts, clean=True)
        kinds = np.full(x.shape, -1, dtype=np.int64)
        for i in (3, 2, 1, 0):  # where faults coincide, the lower index (in KINDS) is named
            kinds[masks[i]] = i
        imputed = self._impute(x, faulty)
        changes = self._episodes_of(t0, period, kinds, counts)
        return Checked(imputed.astype(np.float32), faulty, self._windowed(faulty), changes, counts)

    def _all_inside(self, given: NDArray[np.float32]) -> bool:
        """Whether every cell is inside both ranges (NaN fails both comparisons; unbounded,
        nothing else does)."""
        if not self._bounded:
            return not np.isnan(given).any()
        return bool(((given >= self._lower) & (given <= self._upper)).all())

    @property
    def _tail_faulty(self) -> bool:
        return bool(self._tail_faults)

    def _windowed(self, faulty: NDArray[np.bool_]) -> NDArray[np.bool_]:
        """Per reading and channel: any faulty cell among the last ``window`` readings."""
        rows = np.vstack([self._tail, faulty])
        total = np.concatenate([np.zeros((1, rows.shape[1])), np.cumsum(rows, axis=0)])
        w = self._window
        self._tail = rows[len(rows) - (w - 1) :] if w > 1 else rows[:0]
        self._tail_faults = int(self._tail.sum())
        hit: NDArray[np.bool_] = (total[w:] - total[: len(total) - w]) > 0
        return hit

    def _masks(self, x: F64, stuck: NDArray[np.bool_]) -> tuple[NDArray[np.bool_], ...]:
        """Per cell, one mask per fault kind in KINDS order (nan, out of range, spike, stuck)."""
        nan = np.isnan(x)
        out_of_range = ~nan & ((x < self._low) | (x > self._high))
        beyond = ~nan & ~out_of_range & ((x < self._spike_low) | (x > self._spike_high))
        spike = self._spikes(x, beyond, nan | out_of_range) if beyond.any() else beyond
        return nan, out_of_range, spike, stuck

    def _spikes(
        self, x: F64, beyond: NDArray[np.bool_], bad: NDArray[np.bool_]
    ) -> NDArray[np.bool_]:
        """Cells ``beyond`` the reference that jumped from the last good reading. A step per
        reading, only for channels with a cell beyond the reference in this block (rare)."""
        spike = np.zeros_like(beyond)
        for c in np.flatnonzero(beyond.any(axis=0)).tolist():
            # before the channel's first good reading there is nothing to jump from
            good = float(self._last_good[c]) if self._seen[c] else np.nan
            for i in range(len(x)):
                if bad[i, c]:
                    continue
                if beyond[i, c] and abs(x[i, c] - good) > self._jump[c]:
                    spike[i, c] = True
                else:
                    good = float(x[i, c])
        return spike

    def _stuck(self, x: NDArray[np.floating], period: float) -> NDArray[np.bool_]:
        """Cells whose value has repeated for ``stuck_s`` seconds (runs carried across blocks)."""
        n = len(x)
        if not self._checks_stuck:  # no channel has a stuck time: runs never matter
            return np.zeros(x.shape, dtype=bool)
        if n == 1:  # a 50 Hz node's usual block
            run1 = np.where(x[0] == self._previous, self._run + 1, 1.0)
            self._previous, self._run = x[0].copy(), run1
            single: NDArray[np.bool_] = (run1 * period >= self._stuck_s)[None, :]
            return single
        previous = np.vstack([self._previous[None, :], x[:-1]])
        same = x == previous
        if not ((self._run + n) * period >= self._stuck_s).any():
            # No run can reach stuck_s in this block: only the last row's runs are needed.
            changed = ~same
            since = np.argmax(changed[::-1], axis=0)  # rows after each column's last change
            self._run = np.where(changed.any(axis=0), since + 1.0, self._run + n)
            self._previous = x[-1].copy()
            return np.zeros(x.shape, dtype=bool)
        rows = np.arange(n)[:, None]
        last_change = np.maximum.accumulate(np.where(same, -1, rows), axis=0)
        # readings the value at each row has been seen in a row (1 where it just changed)
        run = np.where(last_change >= 0, rows - last_change + 1, rows + 1 + self._run)
        self._previous = x[-1].copy()
        self._run = run[-1].astype(np.float64)
        stuck: NDArray[np.bool_] = run * period >= self._stuck_s
        return stuck

    def _impute(self, x: F64, faulty: NDArray[np.bool_]) -> F64:
        """Faulty cells take the channel's last good value (carried across blocks)."""
        rows = np.arange(len(x))[:, None]
        last = np.maximum.accumulate(np.where(faulty, -1, rows), axis=0)
        filled = np.where(
            last >= 0, np.take_along_axis(x, np.maximum(last, 0), axis=0), self._last_good
        )
        self._last_good = filled[-1].copy()
        return np.where(faulty, filled, x)

    def _episodes_of(
        self, t0: float, period: float, kinds: NDArray[np.int64], counts: Counter[str]
    ) -> list[SensorChange]:
        faulty = kinds >= 0
        changes: list[SensorChange] = []
        active = set(np.flatnonzero(faulty.any(axis=0)).tolist()) | set(self._open)
        for c in sorted(active):
            rows = np.flatnonzero(faulty[:, c])
            for k in np.unique(kinds[rows, c]).tolist():
                counts[f"{self.channels[c]}:{KINDS[k]}"] += int((kinds[rows, c] == k).sum())
            times = (t0 + rows * period).astype(np.float64)
            changes += self._channel_episode(
                c, times, kinds[rows, c], t0 + (len(kinds) - 1) * period
            )
        return changes

    def _channel_episode(
        self, c: int, times: F64, kinds: NDArray[np.int64], end: float
    ) -> list[SensorChange]:
        """Open, extend or close channel ``c``'s episode from the times of its faulty readings
        in a block that ends at ``end``; faults a long quiet apart are separate episodes."""
        changes: list[SensorChange] = []
        quiet = self._close_after_s
        ep = self._open.get(c)
        breaks = np.flatnonzero(np.diff(times) > quiet) + 1
        for group in np.split(np.arange(times.size), breaks) if times.size else []:
            first, last = float(times[group[0]]), float(times[group[-1]])
            if ep is not None and first - ep.last_fault > quiet:
                changes.append(self._close(c, ep))
                ep = None
            if ep is None:
                self._episodes += 1
                ep = _Open(self._episodes, KINDS[int(kinds[group[0]])], first, 0, first)
                self._open[c] = ep
                changes.append(self._change("open", c, ep))
            ep.readings += group.size
            ep.last_fault = last
        if ep is not None and end - ep.last_fault >= quiet:
            changes.append(self._close(c, ep))
        return changes

    def _close(self, c: int, ep: _Open) -> SensorChange:
        del self._open[c]
        return self._change("close", c, ep)

    def _change(self, state: Literal["open", "close"], c: int, ep: _Open) -> SensorChange:
        return SensorChange(
            state=state,
            episode=ep.episode,
            channel=self.channels[c],
            fault=ep.fault,
            started=ep.started,
            ended=ep.last_fault if state == "close" else None,
            readings=ep.readings,
        )


def _bound(spec: SensorSpec | None, side: str, missing: float) -> float:
    """A channel's ``low`` or ``high`` physical limit, ``missing`` when not given."""
    value = getattr(spec, side, None) if spec is not None else None
    return missing if value is None else float(value)
