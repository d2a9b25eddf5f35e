"""The source protocol: what every sensor reader gives the node, plus shared pacing."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

DEFAULT_MAX_BLOCK = 256


class SourceError(ValueError):
    """A source cannot be built or read: bad file, column or parameter (named in the message)."""


@dataclass(frozen=True, slots=True)
class SourceStats:
    """Health of a source that reads a device over the network (counters are since start).

    ``dropouts`` counts channel values read as NaN, by reason (``disconnected``, ``exception``,
    ``bad_status``, ...); one reading lost while disconnected counts once per channel.
    """

    connected: bool
    readings: int
    dropouts: dict[str, int]
    reconnects: int


@dataclass(frozen=True, slots=True)
class Block:
    """Consecutive readings taken every ``period`` seconds from unix time ``t0``.

    ``values`` is float32 ``[n, len(channels)]``; NaN marks a missing reading (dropout).
    """

    t0: float
    period: float
    values: NDArray[np.float32]

    @property
    def n(self) -> int:
        """Number of readings in the block."""
        return int(self.values.shape[0])


class Source(Protocol):
    """A stream of uniformly spaced readings, paced by a monotonic clock the caller passes in."""

    @property
    def channels(self) -> list[str]: ...

    @property
    def period(self) -> float: ...

    @property
    def exhausted(self) -> bool: ...

    def start(self, now: float, wall: float) -> None:
        """Pacing starts at monotonic ``now``, and the first reading is stamped ``wall``."""
        ...

    def poll(self, now: float) -> Block | None: ...

    def stats(self) -> SourceStats | None:
        """Connection and dropout counters, or None for a source with no device behind it."""
        ...

    def close(self) -> None:
        """Release the device connection and any reader thread (the node is stopping)."""
        ...


def check_pacing(*, speed: float, max_block: int, period: float) -> None:
    """Raise SourceError naming the first bad pacing parameter."""
    if not (math.isfinite(speed) and speed >= 0):
        raise SourceError(f"speed must be a finite number >= 0, got {speed!r}")
    if max_block < 1:
        raise SourceError(f"max_block must be >= 1, got {max_block!r}")
    if not (math.isfinite(period) and period > 0):
        raise SourceError(f"period must be a finite number > 0 seconds, got {period!r}")


class Pacer:
    """Decides how many readings are due at a monotonic time.

    Reading ``i`` is due at ``start + i * period / speed`` where ``start`` is the ``now`` of the
    first call; ``speed == 0`` makes every call return ``max_block``.
    """

    # Float division of a poll time that lands exactly on a due time can come out a hair
    # below the integer; this slack (in readings) keeps such a reading due.
    _SLACK = 1e-9

    def __init__(self, *, period: float, speed: float, max_block: int) -> None:
        check_pacing(speed=speed, max_block=max_block, period=period)
        self._period = period
        self._speed = speed
        self._max_block = max_block
        self._start: float | None = None

    def start(self, now: float) -> None:
        """Start pacing at ``now`` instead of at the first call of :meth:`due`."""
        self._start = now

    def due(self, now: float, emitted: int) -> int:
        """Number of readings to emit now, given ``emitted`` readings already handed out."""
        if self._start is None:
            self._start = now
        if self._speed == 0:
            return self._max_block
        elapsed = (now - self._start) * self._speed / self._period
        total = math.floor(elapsed + self._SLACK) + 1 if elapsed >= -self._SLACK else 0
        return max(0, min(total - emitted, self._max_block))
