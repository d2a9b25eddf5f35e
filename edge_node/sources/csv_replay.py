"""Replay of readings CSV files (the format of schemas.readings_csv) as a paced source."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from edge_node.sources.base import (
    DEFAULT_MAX_BLOCK,
    Block,
    Pacer,
    SourceError,
    SourceStats,
)
from schemas.readings_csv import CsvData, CsvFormatError, median, read_csv

log = logging.getLogger(__name__)


class CsvReplay:
    """Replays CSV files one after another as one stream, paced by the caller's clock."""

    def __init__(
        self,
        paths: Sequence[Path],
        *,
        speed: float = 1.0,
        loop: bool = False,
        wall_start: float,
        max_block: int = DEFAULT_MAX_BLOCK,
    ) -> None:
        if not paths:
            raise SourceError("CsvReplay needs at least one file (paths is empty)")
        try:
            files = [read_csv(path) for path in paths]
            self._period = files[0].period(str(paths[0]))
        except CsvFormatError as exc:
            raise SourceError(str(exc)) from None
        self._channels = files[0].channels
        for path, data in zip(paths[1:], files[1:], strict=True):
            if data.channels != self._channels:
                raise SourceError(
                    f"{path}: channels {data.channels} differ from {paths[0]}: {self._channels}"
                )
        self._warn_other_periods(paths, files)
        self._values = np.concatenate([data.values for data in files])
        self._loop = loop
        self._wall_start = wall_start
        self._pacer = Pacer(period=self._period, speed=speed, max_block=max_block)
        self._emitted = 0

    @property
    def channels(self) -> list[str]:
        """Normalised channel names, in column order."""
        return list(self._channels)

    @property
    def period(self) -> float:
        """Seconds between readings (median step of the first file)."""
        return self._period

    @property
    def exhausted(self) -> bool:
        """True once a non-looping replay has emitted every reading."""
        return not self._loop and self._emitted >= len(self._values)

    def start(self, now: float, wall: float) -> None:
        """Pace from monotonic ``now``; stamp the first reading ``wall`` (the node calls this as
        its loop starts, so that start-up time does not put the timestamps behind)."""
        self._pacer.start(now)
        self._wall_start = wall

    def poll(self, now: float) -> Block | None:
        """The readings due by monotonic time ``now``, or None."""
        n = self._pacer.due(now, self._emitted)
        if not self._loop:
            n = min(n, len(self._values) - self._emitted)
        if n <= 0:
            return None
        rows = np.arange(self._emitted, self._emitted + n) % len(self._values)
        block = Block(
            t0=self._wall_start + self._emitted * self._period,
            period=self._period,
            values=self._values[rows],
        )
        self._emitted += n
        return block

    def stats(self) -> SourceStats | None:
        """None: no device connection behind this source."""
        return None

    def close(self) -> None:
        """Nothing to release."""

    def _warn_other_periods(self, paths: Sequence[Path], files: list[CsvData]) -> None:
        for path, data in zip(paths[1:], files[1:], strict=True):
            if data.timestamps.size >= 2:
                other = median(np.diff(data.timestamps))
                if not math.isclose(other, self._period, rel_tol=0.01):
                    log.warning(
                        "%s: period %.6gs differs from the first file's %.6gs; replaying at %.6gs",
                        path,
                        other,
                        self._period,
                        self._period,
                    )
