"""Sliding windows over the reading stream: one window ending at every reading."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray


@dataclass(frozen=True)
class WindowBatch:
    """``windows`` float32 ``[n, window, C]`` (oldest first); ``imputed[i]``: reading i had NaN;
    ``complete[i]``: window i holds only readings seen (none of the start's padding)."""

    windows: NDArray[np.float32]
    imputed: NDArray[np.bool_]
    complete: NDArray[np.bool_]


class Windower:
    """Turns blocks of readings into model inputs, carrying history across blocks.

    Missing cells (NaN) are forward-filled with the channel's last good value, or ``fill``
    before any was seen; before the first reading the history repeats that (filled) reading.
    """

    def __init__(self, window: int, fill: ArrayLike) -> None:
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        fill_row = np.asarray(fill, dtype=np.float32)
        if fill_row.ndim != 1 or fill_row.size == 0:
            raise ValueError(f"fill must be one value per channel, got shape {fill_row.shape}")
        if not np.isfinite(fill_row).all():
            raise ValueError("fill must be finite for every channel")
        self._window = window
        self._last = fill_row.copy()
        self._history: NDArray[np.float32] | None = None
        self._seen = 0  # readings pushed so far (capped: only "at least window" matters)
        self._index = np.empty((0, window), dtype=np.intp)

    @property
    def window(self) -> int:
        """Readings per window."""
        return self._window

    @property
    def channels(self) -> int:
        """Channel count the windower expects."""
        return int(self._last.size)

    def push(self, values: ArrayLike) -> WindowBatch:
        """Windows ending at each of the ``n`` new readings ``[n, C]``."""
        block = np.asarray(values, dtype=np.float32)
        if block.ndim != 2:
            raise ValueError(f"values must be 2-D [n, channels], got shape {block.shape}")
        if block.shape[1] != self.channels:
            raise ValueError(
                f"values have {block.shape[1]} channels, the windower expects {self.channels}"
            )
        missing = np.isnan(block)
        n = block.shape[0]
        gaps = bool(missing.any())
        imputed: NDArray[np.bool_] = (
            np.asarray(missing.any(axis=1)) if gaps else np.zeros(n, dtype=np.bool_)
        )
        if self._seen >= self._window:  # past start-up every window is complete
            complete = np.ones(n, dtype=np.bool_)
        else:
            complete = np.arange(self._seen + 1, self._seen + n + 1) >= self._window
            self._seen = min(self._seen + n, self._window)
        if n == 0:
            empty = np.empty((0, self._window, self.channels), dtype=np.float32)
            return WindowBatch(windows=empty, imputed=imputed, complete=complete)
        # Nothing to fill (the common case) needs no copy: the series concatenation copies.
        filled = self._forward_fill(block, missing) if gaps else block
        if self._history is None:
            self._history = np.repeat(filled[:1], self._window - 1, axis=0)
        series = np.concatenate([self._history, filled])
        self._history = series[n:]  # the last window - 1 rows (series is new every time)
        self._last = filled[-1].copy()
        # Window i is rows i .. i + window - 1 of the series: one gather makes them all.
        windows = np.take(series, self._rows(n), axis=0)
        return WindowBatch(windows=windows, imputed=imputed, complete=complete)

    def _rows(self, n: int) -> NDArray[np.intp]:
        """Row indices ``[n, window]`` of each window in the series (kept for the largest n)."""
        if len(self._index) < n:
            self._index = np.arange(n)[:, None] + np.arange(self._window)[None, :]
        return self._index[:n]

    def _forward_fill(
        self, block: NDArray[np.float32], missing: NDArray[np.bool_]
    ) -> NDArray[np.float32]:
        """NaN cells take the latest good value above them (row 0 of ``padded`` is the carry)."""
        padded = np.concatenate([self._last[None, :], block])
        rows = np.arange(len(padded))[:, None]
        source = np.where(np.concatenate([np.zeros((1, block.shape[1]), bool), missing]), 0, rows)
        np.maximum.accumulate(source, axis=0, out=source)
        return padded[source, np.arange(block.shape[1])][1:]


class RecentRows:
    """The last ``capacity`` raw readings of every channel, oldest first.

    A model switched in mid-stream is primed with them, so its first windows hold real history
    rather than a repeated first reading. Kept in a ring: a block costs a copy of its rows only.
    """

    def __init__(self, capacity: int, channels: int) -> None:
        if capacity < 0 or channels < 1:
            raise ValueError(f"capacity must be >= 0 and channels >= 1, got {capacity}, {channels}")
        self._capacity = capacity
        self._ring = np.empty((capacity, channels), dtype=np.float32)
        self._end = 0  # ring index after the newest row
        self._size = 0  # rows held

    @property
    def capacity(self) -> int:
        return self._capacity

    def grow(self, capacity: int) -> None:
        """Keep at least ``capacity`` rows from now on (rows already forgotten stay gone)."""
        if capacity <= self._capacity:
            return
        rows = self.last(self._size)
        self._capacity = capacity
        self._ring = np.empty((capacity, self._ring.shape[1]), dtype=np.float32)
        self._ring[: len(rows)] = rows
        self._end, self._size = len(rows) % capacity, len(rows)

    def push(self, values: ArrayLike) -> None:
        """Append a block ``[n, C]``, forgetting the oldest rows beyond ``capacity``."""
        block = np.asarray(values, dtype=np.float32)
        if block.ndim != 2 or block.shape[1] != self._ring.shape[1]:
            raise ValueError(
                f"values have shape {list(block.shape)}, expected [n, {self._ring.shape[1]}]"
            )
        keep = self._capacity
        if keep == 0:
            return
        n = block.shape[0]
        if n >= keep:
            self._ring[:] = block[n - keep :]
            self._end, self._size = 0, keep
            return
        end = self._end + n
        if end <= keep:
            self._ring[self._end : end] = block
        else:  # wraps round
            self._ring[self._end :] = block[: keep - self._end]
            self._ring[: end - keep] = block[keep - self._end :]
        self._end, self._size = end % keep, min(self._size + n, keep)

    def last(self, n: int) -> NDArray[np.float32]:
        """The last ``n`` rows (fewer if fewer were seen), oldest first (a copy)."""
        n = min(max(n, 0), self._size)
        start = self._end - n
        if start >= 0:
            return self._ring[start : self._end].copy()
        return np.concatenate([self._ring[start:], self._ring[: self._end]])
