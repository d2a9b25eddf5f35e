"""The alarm rule: how a model's per-reading scores become the flags a node raises.

A reading *exceeds* when its score is above the model's threshold. The alarm opens at the
reading where at least ``open_after`` of the last ``open_within`` readings exceeded, and stays
open until ``close_after`` consecutive readings have not exceeded. A reading is flagged when the
alarm is open after it, so a flag depends only on the past and a node can apply the rule block
by block. The rule travels in the model's manifest, and this module is its one implementation:
the trainer's validation and the node compute exactly the same flags.
"""

from __future__ import annotations

from typing import Annotated

import msgspec
import numpy as np
from numpy.typing import ArrayLike, NDArray


class AlarmSpec(msgspec.Struct, kw_only=True, frozen=True):
    """Open on ``open_after`` exceedances among the last ``open_within`` readings; close after
    ``close_after`` quiet readings. The default flags exactly the exceeding readings."""

    open_after: Annotated[int, msgspec.Meta(ge=1)] = 1
    open_within: Annotated[int, msgspec.Meta(ge=1)] = 1
    close_after: Annotated[int, msgspec.Meta(ge=1)] = 1

    def __post_init__(self) -> None:
        if self.open_after > self.open_within:
            raise ValueError(
                f"open_after ({self.open_after}) cannot exceed open_within ({self.open_within})"
            )

    def describe(self) -> str:
        """One line for people, e.g. ``open on 3 of 5 readings over threshold, close after 30``."""
        return (
            f"open on {self.open_after} of {self.open_within} readings over threshold, "
            f"close after {self.close_after} below"
        )


class AlarmFilter:
    """The alarm state of one model's stream; :meth:`update` takes exceedances in order.

    Work is per alarm change, not per reading: a block costs a few numpy passes plus one step
    for each time the alarm opens or closes in it.
    """

    def __init__(self, spec: AlarmSpec) -> None:
        self.spec = spec
        self._history = np.zeros(spec.open_within - 1, dtype=bool)  # last readings' exceedances
        self._open = False
        self._quiet = 0  # readings without an exceedance since the last one (or the opening)

    @property
    def open(self) -> bool:
        """Whether the alarm is open after the last reading seen."""
        return self._open

    def update(self, exceed: ArrayLike) -> NDArray[np.bool_]:
        """Flags of the next readings (True: the alarm is open after that reading)."""
        hits = np.asarray(exceed, dtype=bool).ravel()
        n = hits.size
        out = np.zeros(n, dtype=bool)
        if n == 0:
            return out
        spec, past = self.spec, self._history.size
        if self._open and hits.all():  # open and every reading over: it stays open
            out[:] = True
            self._quiet = 0
            if past:
                self._history = np.concatenate([self._history, hits])[-past:]
            return out
        if not self._open and not hits.any() and self._history.sum() < spec.open_after:
            # Closed and nothing to open it (the usual block): only the history moves on.
            if past:
                self._history = np.concatenate([self._history, hits])[-past:]
            return out
        extended = np.concatenate([self._history, hits])
        total = np.concatenate([[0], np.cumsum(extended)])
        end = np.arange(n) + past + 1
        can_open = total[end] - total[np.maximum(end - spec.open_within, 0)] >= spec.open_after
        index = np.arange(n)
        last_hit = np.maximum.accumulate(np.where(hits, index, -(2**62)))
        # While open, the quiet run is counted from the later of the last hit and the opening.
        anchor = -1 - self._quiet
        t = 0
        while t < n:
            if self._open:
                marker = np.maximum(last_hit[t:], anchor)
                closes = np.flatnonzero(index[t:] - marker >= spec.close_after)
                if closes.size == 0:
                    out[t:] = True
                    self._quiet = int(n - 1 - marker[-1])
                    break
                stop = t + int(closes[0])
                out[t:stop] = True
                self._open, self._quiet, t = False, 0, stop + 1
            else:
                opens = np.flatnonzero(can_open[t:])
                if opens.size == 0:
                    break
                start = t + int(opens[0])
                out[start] = True
                self._open, self._quiet, anchor, t = True, 0, start, start + 1
        if past:
            self._history = extended[-past:].copy()
        return out


def apply(spec: AlarmSpec, exceed: ArrayLike) -> NDArray[np.bool_]:
    """Flags of a whole sequence from a fresh alarm."""
    return AlarmFilter(spec).update(exceed)


def openings(flags: ArrayLike) -> NDArray[np.int64]:
    """Indexes where the alarm opens (index 0 if the first reading is flagged)."""
    f = np.asarray(flags, dtype=bool).ravel()
    before = np.concatenate([[False], f[:-1]])
    return np.flatnonzero(f & ~before).astype(np.int64)
