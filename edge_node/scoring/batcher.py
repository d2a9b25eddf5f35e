"""Groups scored readings into result batches of one model, threshold and period each."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from schemas.messages import ModelRef


@dataclass(frozen=True)
class PendingBatch:
    """A complete batch: ``n`` contiguous readings from reading index ``first`` at ``t0``."""

    model: ModelRef
    first: int
    t0: float
    period: float
    threshold: float
    scores: NDArray[np.float32]
    flags: NDArray[np.bool_]

    @property
    def n(self) -> int:
        """Readings in the batch."""
        return int(self.scores.size)


@dataclass
class _OpenBatch:
    model: ModelRef
    threshold: float
    first: int
    t0: float
    period: float
    opened_at: float
    size: int = 0
    scores: list[NDArray[np.float32]] = field(default_factory=list)
    flags: list[NDArray[np.bool_]] = field(default_factory=list)

    def accepts(self, model: ModelRef, threshold: float, t0: float, period: float) -> bool:
        expected = self.t0 + self.size * self.period
        return (
            model == self.model
            and threshold == self.threshold
            and period == self.period
            and abs(t0 - expected) <= period / 2
        )

    def seal(self) -> PendingBatch:
        return PendingBatch(
            model=self.model,
            first=self.first,
            t0=self.t0,
            period=self.period,
            threshold=self.threshold,
            # One part (a whole block in one batch) needs no copy: it is the batcher's own.
            scores=self.scores[0] if len(self.scores) == 1 else np.concatenate(self.scores),
            flags=self.flags[0] if len(self.flags) == 1 else np.concatenate(self.flags),
        )


class ResultBatcher:
    """Cuts batches at ``max_readings``, on a change of model, threshold or period, on a gap
    in time, and (through ``add`` or ``flush``) when the open batch is ``max_age_s`` old.

    With ``first_at_once`` the first block goes out as a batch of its own at once: a node that
    just started shows its first readings without waiting ``max_age_s``, for one more message.
    """

    def __init__(self, max_readings: int, max_age_s: float, *, first_at_once: bool = False) -> None:
        if max_readings < 1:
            raise ValueError(f"max_readings must be >= 1, got {max_readings}")
        if not max_age_s > 0:
            raise ValueError(f"max_age_s must be > 0, got {max_age_s}")
        self._max_readings = max_readings
        self._max_age_s = max_age_s
        self._open: _OpenBatch | None = None
        self._next = 0  # index of the next reading added, counted since creation
        self._first_at_once = first_at_once

    @property
    def pending(self) -> int:
        """Readings in the open batch."""
        return 0 if self._open is None else self._open.size

    def add(
        self,
        *,
        model: ModelRef,
        threshold: float,
        t0: float,
        period: float,
        scores: ArrayLike,
        flags: ArrayLike,
        now: float,
    ) -> list[PendingBatch]:
        """Add a scored block; returns the batches it completed (oldest first)."""
        # Copies, so a caller reusing its buffers cannot change a batch after the fact.
        s = np.array(scores, dtype=np.float32).reshape(-1)
        f = np.array(flags, dtype=bool).reshape(-1)
        if s.shape != f.shape:
            raise ValueError(f"scores has {s.size} readings but flags has {f.size}")
        done = self.flush(now)
        if self._open is not None and not self._open.accepts(model, threshold, t0, period):
            done.append(self._seal())
        offset = 0
        while offset < s.size:
            if self._open is None:
                self._open = _OpenBatch(
                    model, threshold, self._next, t0 + offset * period, period, opened_at=now
                )
            take = min(self._max_readings - self._open.size, s.size - offset)
            self._open.scores.append(s[offset : offset + take])
            self._open.flags.append(f[offset : offset + take])
            self._open.size += take
            self._next += take
            offset += take
            if self._open.size >= self._max_readings:
                done.append(self._seal())
        if self._first_at_once and self._open is not None and self._open.first == 0:
            done.append(self._seal())
        return done

    def flush(self, now: float, force: bool = False) -> list[PendingBatch]:
        """The open batch if it was opened ``max_age_s`` or more before ``now``, or if forced."""
        if self._open is None:
            return []
        if force or now - self._open.opened_at >= self._max_age_s:
            return [self._seal()]
        return []

    def _seal(self) -> PendingBatch:
        if self._open is None:
            raise RuntimeError("no open batch to seal")
        batch, self._open = self._open.seal(), None
        return batch
