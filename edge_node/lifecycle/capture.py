"""Raw readings kept for training: a ring of the last readings, a collector of the next ones,
and the split into upload chunks (pure numpy, no I/O).

Readings are kept in the source's channel order, exactly as read (NaN dropouts included), so
the hub trains on what the sensors said rather than on one model's view of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

import numpy as np
from numpy.typing import ArrayLike, NDArray

MAX_CHUNK_BYTES = 128 * 1024


@dataclass(frozen=True)
class Segment:
    """``values`` float32 ``[n, C]``: readings every ``period`` seconds from ``t0``."""

    t0: float
    period: float
    values: NDArray[np.float32]

    @property
    def n(self) -> int:
        return int(self.values.shape[0])

    @property
    def end(self) -> float:
        """When the reading after the last one is due."""
        return self.t0 + self.n * self.period

    def tail(self, n: int) -> Segment:
        """The last ``n`` readings."""
        skip = self.n - n
        return Segment(self.t0 + skip * self.period, self.period, self.values[skip:])

    def head(self, n: int) -> Segment:
        """The first ``n`` readings."""
        return Segment(self.t0, self.period, self.values[:n])


def _segment(t0: float, period: float, values: ArrayLike, channels: int) -> Segment:
    rows = np.array(values, dtype=np.float32)  # a copy: the caller may reuse its buffer
    if rows.ndim != 2 or rows.shape[1] != channels:
        raise ValueError(f"values have shape {list(rows.shape)}, expected [n, {channels}]")
    return Segment(float(t0), float(period), rows)


class CaptureRing:
    """The last ``capacity`` readings in preallocated arrays (values, and each reading's time
    and period), so a node polling one reading at a time adds no object per poll: memory is
    fixed from the start, about ``capacity * (4 * channels + 16)`` bytes."""

    def __init__(self, capacity: int, channels: int) -> None:
        if capacity < 1 or channels < 1:
            raise ValueError(f"capacity and channels must be >= 1, got {capacity}, {channels}")
        self.capacity = capacity
        self.channels = channels
        self._values = np.zeros((capacity, channels), dtype=np.float32)
        self._times = np.zeros(capacity, dtype=np.float64)
        self._periods = np.zeros(capacity, dtype=np.float64)
        self._next = 0  # row the next reading goes to
        self._size = 0

    def __len__(self) -> int:
        return self._size

    def add(self, t0: float, period: float, values: ArrayLike) -> None:
        """Append a block of readings, forgetting the oldest beyond ``capacity``."""
        rows = np.asarray(values, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.channels:
            raise ValueError(f"values have shape {list(rows.shape)}, expected [n, {self.channels}]")
        n = rows.shape[0]
        if n == 0:
            return
        skip = max(n - self.capacity, 0)
        index = (self._next + np.arange(n - skip)) % self.capacity
        self._values[index] = rows[skip:]  # copied in: the caller may reuse its buffer
        self._times[index] = float(t0) + np.arange(skip, n) * float(period)
        self._periods[index] = float(period)
        self._next = int(index[-1] + 1) % self.capacity
        self._size = min(self._size + n - skip, self.capacity)

    def last(self, n: int) -> list[Segment]:
        """The last ``n`` readings (fewer if the ring holds fewer), oldest first, as runs of
        readings that follow each other in time (cut where time jumps or the period changes)."""
        take = min(max(n, 0), self._size)
        if take == 0:
            return []
        index = (self._next - take + np.arange(take)) % self.capacity
        values, times, periods = self._values[index], self._times[index], self._periods[index]
        follows = (periods[1:] == periods[:-1]) & (
            np.abs(times[1:] - (times[:-1] + periods[:-1])) <= periods[:-1] / 2
        )
        starts = [0, *(np.flatnonzero(~follows) + 1).tolist(), take]
        return [
            Segment(float(times[a]), float(periods[a]), values[a:b]) for a, b in pairwise(starts)
        ]


class NextCapture:
    """Collects the next ``wanted`` readings for the retrain command ``command``."""

    def __init__(self, command: str, wanted: int, channels: int) -> None:
        if wanted < 1:
            raise ValueError(f"wanted must be >= 1, got {wanted}")
        self.command = command
        self.wanted = wanted
        self.channels = channels
        self.segments: list[Segment] = []
        self.got = 0

    @property
    def done(self) -> bool:
        return self.got >= self.wanted

    def add(self, t0: float, period: float, values: ArrayLike) -> bool:
        """Take what is still wanted of a block; True once the capture is complete."""
        block = _segment(t0, period, values, self.channels)
        take = min(self.wanted - self.got, block.n)
        if take > 0:
            self.segments.append(block.head(take))
            self.got += take
        return self.done


def upload_chunks(
    segments: list[Segment], channels: int, max_bytes: int = MAX_CHUNK_BYTES
) -> list[Segment]:
    """Contiguous runs of readings, each at most ``max_bytes`` of float32 data.

    A chunk carries one ``t0`` and ``period``, so chunks are also cut wherever time jumps
    (a gap in the source, a change of period).
    """
    rows = max(1, max_bytes // (4 * channels))
    groups: list[list[Segment]] = []
    for seg in segments:
        if seg.n == 0:
            continue
        if groups and _continues(groups[-1][-1], seg):
            groups[-1].append(seg)
        else:
            groups.append([seg])
    out: list[Segment] = []
    for group in groups:
        first = group[0]
        values = np.concatenate([g.values for g in group]) if len(group) > 1 else first.values
        out += [
            Segment(first.t0 + i * first.period, first.period, values[i : i + rows])
            for i in range(0, len(values), rows)
        ]
    return out


def _continues(prev: Segment, seg: Segment) -> bool:
    return seg.period == prev.period and abs(seg.t0 - prev.end) <= prev.period / 2
