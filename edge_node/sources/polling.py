"""Sources that poll a device over the network (Modbus, OPC UA) on a reader thread.

Why a thread, not a short timeout inside ``poll``: the node's loop is single-threaded and also
hands messages to MQTT, answers commands and sends telemetry. A device that is unreachable
costs a whole connect timeout per attempt (a dropped SYN waits the full timeout), and a slow
one a read timeout per request; inside ``poll`` that would stall the loop for most of each
period while the device is away, exactly when the node has the most to report. On its own
thread the reader may block; the loop only drains a bounded buffer, which never blocks.

The reader thread keeps its own schedule: reading ``k`` is due at ``start + k * period``, and
every due reading yields exactly one row, with NaN for each channel that could not be read
(disconnected, exception response, bad status, late). The stream therefore stays uniform, its
timestamps follow from ``k``, and a lost value is a dropout the model already knows how to
handle, counted by reason in :meth:`PolledSource.stats`.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray

from edge_node.sources.base import Block, SourceError, SourceStats

log = logging.getLogger(__name__)

# A device that stays away is reported at WARNING at most this often (each attempt at DEBUG).
WARN_EVERY_S = 60.0


class ReadError(Exception):
    """The connection to the device failed or was lost; ``connect`` must succeed again."""


@dataclass(frozen=True, slots=True)
class Reading:
    """One reading of every channel; ``reasons[i]`` is "" for a good value, else a short key
    (``exception``, ``bad_status``, ...) with ``values[i]`` NaN and a human ``details[i]``."""

    values: NDArray[np.float64]
    reasons: list[str]
    details: list[str]


class Reader(Protocol):
    """The port to one device; an adapter module per protocol implements it."""

    @property
    def channels(self) -> list[str]: ...

    @property
    def name(self) -> str:
        """Where the device is, for log lines (``modbus 10.0.0.5:502 unit 1``)."""
        ...

    def connect(self) -> None:
        """Open the connection, bounded by the reader's timeout; raise ReadError on failure."""
        ...

    def read(self) -> Reading:
        """Read every channel once; raise ReadError when the connection is gone."""
        ...

    def close(self) -> None: ...


class Backoff:
    """Delays between connection attempts: ``first``, doubling up to ``most`` seconds."""

    def __init__(self, first: float, most: float) -> None:
        if not (math.isfinite(first) and 0 < first <= most and math.isfinite(most)):
            raise SourceError(f"backoff needs 0 < first <= most, got {first!r}, {most!r}")
        self.first, self.most = first, most

    def delay(self, failures: int) -> float:
        """The wait after ``failures`` consecutive failed attempts (>= 1)."""
        return min(self.most, self.first * 2.0 ** min(max(failures - 1, 0), 60))


class Poller:
    """Connection state and one row per due reading; driven by the caller's clock.

    Not thread-safe: :class:`PolledSource` calls it from its reader thread only.
    """

    def __init__(self, reader: Reader, backoff: Backoff) -> None:
        self.reader = reader
        self.backoff = backoff
        self.connected = False
        self.reconnects = 0
        self._ever_connected = False
        self._failures = 0
        self._next_attempt = -math.inf
        self._lost_at: float | None = None
        self._last_warning = -math.inf
        self._bad: dict[int, str] = {}  # channel index -> reason it is currently bad for
        self._width = len(reader.channels)

    def row(self, now: float) -> tuple[NDArray[np.float64], list[str]]:
        """The reading due at ``now``: the values and a reason per channel ("" when good)."""
        if not self.connected and not self._try_connect(now):
            return self.missing(1)[0], ["disconnected"] * self._width
        try:
            reading = self.reader.read()
        except ReadError as exc:
            self._lose(now, f"connection lost: {exc}")
            return self.missing(1)[0], ["disconnected"] * self._width
        self._note_channels(reading)
        return reading.values, reading.reasons

    def missing(self, n: int) -> NDArray[np.float64]:
        """``n`` rows of NaN (readings that could not be taken)."""
        return np.full((n, self._width), np.nan)

    def lose(self, now: float, why: str) -> None:
        """The reader failed in a way it did not report as ReadError: start over."""
        self._lose(now, why)

    def _try_connect(self, now: float) -> bool:
        if now < self._next_attempt:
            return False
        try:
            self.reader.connect()
        except ReadError as exc:
            self._failures += 1
            wait = self.backoff.delay(self._failures)
            self._next_attempt = now + wait
            self._warn(now, exc, wait)
            return False
        self.connected = True
        if self._ever_connected:
            self.reconnects += 1
            away = now - self._lost_at if self._lost_at is not None else 0.0
            log.warning("%s: reconnected after %.1f s", self.reader.name, away)
        else:
            log.info("%s: connected", self.reader.name)
        self._ever_connected = True
        self._failures, self._lost_at, self._last_warning = 0, None, -math.inf
        return True

    def _warn(self, now: float, exc: ReadError, wait: float) -> None:
        level = logging.DEBUG
        if now - self._last_warning >= WARN_EVERY_S:
            level, self._last_warning = logging.WARNING, now
        log.log(
            level,
            "%s: cannot connect (attempt %d): %s; next try in %.3g s; "
            "its readings are dropouts (NaN) meanwhile",
            self.reader.name,
            self._failures,
            exc,
            wait,
        )

    def _lose(self, now: float, why: str) -> None:
        log.warning("%s: %s", self.reader.name, why)
        self.reader.close()
        self.connected = False
        self._lost_at = now
        self._next_attempt = now  # try again at once; back off only if that fails
        self._last_warning = now

    def _note_channels(self, reading: Reading) -> None:
        """Log a channel when it turns bad or recovers, not on every bad reading."""
        channels = self.reader.channels
        for i, reason in enumerate(reading.reasons):
            before = self._bad.get(i)
            if reason and before != reason:
                self._bad[i] = reason
                log.warning(
                    "%s: channel %s reads as dropout (%s: %s)",
                    self.reader.name,
                    channels[i],
                    reason,
                    reading.details[i],
                )
            elif not reason and before:
                del self._bad[i]
                log.info("%s: channel %s reads again", self.reader.name, channels[i])


class RowBuffer:
    """Readings between the reader thread and the node's loop: bounded, thread-safe, and
    counting what it holds back (dropouts by reason) and what it had to discard."""

    def __init__(self, width: int, capacity: int) -> None:
        if capacity < 1:
            raise SourceError(f"buffer must be >= 1 readings, got {capacity}")
        self._width = width
        self._capacity = capacity
        self._rows: deque[tuple[int, NDArray[np.float64]]] = deque()
        self._lock = threading.Lock()
        self._dropouts: Counter[str] = Counter()
        self._readings = 0

    def push(self, k: int, rows: NDArray[np.float64], reasons: list[str]) -> None:
        """Readings ``k, k+1, ...``; ``reasons`` holds one entry per NaN channel value."""
        with self._lock:
            for i, row in enumerate(rows):
                if len(self._rows) >= self._capacity:
                    self._rows.popleft()
                    self._dropouts["overflow"] += self._width
                self._rows.append((k + i, row))
            self._readings += len(rows)
            self._dropouts.update(r for r in reasons if r)

    def take(self, most: int) -> tuple[int, NDArray[np.float32]] | None:
        """The oldest run of consecutive readings (at most ``most``) and its first index."""
        with self._lock:
            if not self._rows:
                return None
            first, row = self._rows.popleft()
            rows = [row]
            while self._rows and len(rows) < most and self._rows[0][0] == first + len(rows):
                rows.append(self._rows.popleft()[1])
        return first, np.asarray(rows, dtype=np.float32)

    def counts(self) -> tuple[int, dict[str, int]]:
        """Readings taken since start, and channel values lost by reason."""
        with self._lock:
            return self._readings, dict(self._dropouts)


def behind(origin: float, period: float, k: int, now: float) -> int:
    """Readings after ``k`` already overdue at ``now`` (reading ``k`` is due at
    ``origin + k * period``): what a read or connect that took too long has cost."""
    return max(0, math.floor((now - (origin + k * period)) / period))


class PolledSource:
    """A :class:`~edge_node.sources.base.Source` fed by a reader thread through a bounded
    buffer; the node's ``poll`` never waits for the device."""

    def __init__(
        self,
        reader: Reader,
        *,
        rate_hz: float,
        backoff: Backoff,
        wall_start: float,
        max_block: int,
        buffer: int = 4096,
    ) -> None:
        if not (math.isfinite(rate_hz) and rate_hz > 0):
            raise SourceError(f"rate_hz must be a finite number > 0, got {rate_hz!r}")
        if max_block < 1:
            raise SourceError(f"max_block must be >= 1, got {max_block}")
        self._poller = Poller(reader, backoff)
        self._channels = list(reader.channels)
        self._width = len(self._channels)
        self._period = 1.0 / rate_hz
        self._wall_start = wall_start
        self._max_block = max_block
        self._buffer = RowBuffer(self._width, buffer)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def channels(self) -> list[str]:
        """Channel names, in map order."""
        return list(self._channels)

    @property
    def period(self) -> float:
        """Seconds between readings (1 / rate_hz)."""
        return self._period

    @property
    def exhausted(self) -> bool:
        """Never: a device is read until the node stops."""
        return False

    def start(self, now: float, wall: float) -> None:
        """Start the reader thread: reading 0 is due at monotonic ``now``, stamped ``wall``."""
        if self._thread is not None:
            return
        self._wall_start = wall
        self._thread = threading.Thread(
            target=self._run, args=(now,), name="source-reader", daemon=True
        )
        self._thread.start()

    def poll(self, now: float) -> Block | None:
        """The consecutive readings taken so far (at most ``max_block``), or None."""
        del now  # the reader thread keeps the schedule
        taken = self._buffer.take(self._max_block)
        if taken is None:
            return None
        first, values = taken
        return Block(t0=self._wall_start + first * self._period, period=self._period, values=values)

    def stats(self) -> SourceStats:
        """Connection state and dropout counts since start."""
        readings, dropouts = self._buffer.counts()
        return SourceStats(
            connected=self._poller.connected,
            readings=readings,
            dropouts=dropouts,
            reconnects=self._poller.reconnects,
        )

    def close(self) -> None:
        """Stop the reader thread and close the connection."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
            if self._thread.is_alive():
                log.warning("%s: reader thread did not stop in 10 s", self._poller.reader.name)
                return
        self._poller.reader.close()

    # -- the reader thread -----------------------------------------------------------------

    def _run(self, origin: float) -> None:
        k = 0
        while not self._stop.wait(max(0.0, origin + k * self._period - time.monotonic())):
            now = time.monotonic()
            late = behind(origin, self._period, k, now)
            if late:  # the last read or connect took longer than a period
                reason = "late" if self._poller.connected else "disconnected"
                self._buffer.push(k, self._poller.missing(late), [reason] * (late * self._width))
                k += late
            row, reasons = self._read(now)
            self._buffer.push(k, row[np.newaxis, :], reasons)
            k += 1

    def _read(self, now: float) -> tuple[NDArray[np.float64], list[str]]:
        try:
            return self._poller.row(now)
        except Exception as exc:  # a reader bug must not end the stream: count, log, go on
            log.exception("%s: unexpected reader error", self._poller.reader.name)
            self._poller.lose(now, f"unexpected reader error: {exc!r}")
            return self._poller.missing(1)[0], ["reader_error"] * self._width
