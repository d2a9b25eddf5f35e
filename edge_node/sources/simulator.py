"""A seeded simulator of SKAB's 8-channel centrifugal pump, with injectable sensor faults.

Healthy behaviour follows SKAB's anomaly-free recording: its channel means and spreads, a slow
load cycle that moves current, flow and vibration together (and motor temperature against
them: more flow cools the motor), slow fluid heating, mains noise shared by voltage and
current, and pressure quantised to the rig's sensor steps.

Values are generated in fixed chunks of ``CHUNK`` readings, each from its own random stream
``(seed, chunk index)``, so a stream depends only on the seed, never on how it is polled.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray

from edge_node.sources.base import (
    DEFAULT_MAX_BLOCK,
    Block,
    Pacer,
    SourceError,
    SourceStats,
)
from schemas.readings_csv import normalise_channel

CHANNELS = (
    "accelerometer1rms",
    "accelerometer2rms",
    "current",
    "pressure",
    "temperature",
    "thermocouple",
    "voltage",
    "volume_flow_raterms",
)
# Mean and standard deviation of each channel in SKAB's anomaly-free.csv; faults are sized
# in these standard deviations.
NOMINAL_MEAN = dict(
    zip(CHANNELS, (0.2126, 0.2684, 2.403, 0.111, 89.47, 28.47, 228.6, 125.2), strict=True)
)
NOMINAL_SD = dict(
    zip(CHANNELS, (0.0047, 0.0040, 0.486, 0.253, 0.667, 0.731, 10.98, 1.605), strict=True)
)
# SKAB's pressure sensor reports only multiples of this step (offset by the base value).
PRESSURE_STEP = 0.327927
PRESSURE_BASE = 0.054711

CHUNK = 256
SPIKE_PROBABILITY = 0.2
DEFAULT_MAGNITUDE = 4.0

FaultKind = Literal["drift", "offset", "spike", "stuck", "dropout"]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)


@dataclass(frozen=True)
class Fault:
    """A sensor fault on one channel for the readings whose stream time (seconds since the
    first reading) lies in ``[start_s, start_s + duration_s)``; outside it the channel is healthy.

    - ``drift``: an offset growing linearly from 0 to ``magnitude`` nominal stds over the window.
    - ``offset``: the same ramp, but the channel then keeps the full offset for ever (a sensor
      recalibrated or a machine settled at a new normal); ``fault_labels`` marks only the ramp.
    - ``spike``: the first reading of the window and then each reading with probability
      ``SPIKE_PROBABILITY`` jumps by ``magnitude`` nominal stds, with a random sign.
    - ``stuck``: the channel repeats its healthy value from the reading just before the window.
    - ``dropout``: the channel reads NaN.

    ``magnitude`` is ignored by ``stuck`` and ``dropout``.
    """

    kind: FaultKind
    channel: str
    start_s: float
    duration_s: float
    magnitude: float = DEFAULT_MAGNITUDE

    def __post_init__(self) -> None:
        if self.kind not in FAULT_KINDS:
            raise SourceError(f"fault kind {self.kind!r} is not one of {', '.join(FAULT_KINDS)}")
        if self.channel not in CHANNELS:
            raise SourceError(f"fault channel {self.channel!r} is not one of {', '.join(CHANNELS)}")
        if not (math.isfinite(self.start_s) and self.start_s >= 0):
            raise SourceError(f"fault start_s must be a finite number >= 0, got {self.start_s}")
        if not (math.isfinite(self.duration_s) and self.duration_s > 0):
            raise SourceError(
                f"fault duration_s must be a finite number > 0, got {self.duration_s}"
            )
        if not math.isfinite(self.magnitude):
            raise SourceError(f"fault magnitude must be finite, got {self.magnitude}")


def parse_fault(text: str) -> Fault:
    """Parse ``kind:channel:start_s:duration_s[:magnitude]``, e.g. ``drift:pressure:60:120:4``."""
    parts = [part.strip() for part in text.split(":")]
    if len(parts) not in (4, 5):
        raise SourceError(
            f"fault {text!r}: expected kind:channel:start_s:duration_s[:magnitude], "
            f"got {len(parts)} fields"
        )
    numbers: list[float] = []
    for name, part in zip(("start_s", "duration_s", "magnitude"), parts[2:], strict=False):
        try:
            numbers.append(float(part))
        except ValueError:
            raise SourceError(f"fault {text!r}: {name} {part!r} is not a number") from None
    kind = parts[0].lower()
    if kind not in FAULT_KINDS:
        raise SourceError(
            f"fault {text!r}: kind {parts[0]!r} is not one of {', '.join(FAULT_KINDS)}"
        )
    try:
        return Fault(kind, normalise_channel(parts[1]), *numbers)  # type: ignore[arg-type]
    except SourceError as exc:
        raise SourceError(f"fault {text!r}: {exc}") from None


class _Lag:
    """First-order recursion ``x[t] = a * x[t-1] + u[t]`` over a chunk, as one matrix product.

    The matrix is Toeplitz (entry ``[i, j]`` is ``a ** (i - j)`` below the diagonal): only its
    first column is kept, padded with zeros, and the matrix is laid out from it into
    ``scratch`` for each product. Five of them held whole were 2.5 MB of a node's memory.
    """

    def __init__(self, a: float) -> None:
        steps = np.subtract.outer(np.arange(CHUNK), np.arange(CHUNK))
        # The upper triangle is masked out; clamping its exponent avoids overflow for small a.
        matrix = np.where(steps >= 0, a ** np.maximum(steps, 0).astype(np.float64), 0.0)
        self._carry = a ** np.arange(1, CHUNK + 1, dtype=np.float64)
        # Row i of the matrix is column 0 read backwards from row i, zeros beyond its start.
        column = np.concatenate([np.zeros(CHUNK - 1), matrix[:, 0]])
        self._rows = sliding_window_view(column, CHUNK)[:, ::-1]
        # Kept whole only if the layout were not the very same numbers (it always is).
        self._matrix: NDArray[np.float64] | None = (
            None if np.array_equal(self._rows, matrix) else matrix
        )

    def run(
        self, prev: float, drive: NDArray[np.float64], scratch: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        matrix = self._matrix
        if matrix is None:
            matrix = scratch
            np.copyto(matrix, self._rows)
        return matrix @ drive + self._carry * prev


def _decay(period: float, tau: float) -> float:
    return math.exp(-period / tau)


class _PumpModel:
    """Healthy pump readings, one chunk at a time, with filter states carried between chunks."""

    # Time constants (s) of the load wander, mains noise, vibration, motor and fluid heating.
    _TAUS: ClassVar[dict[str, float]] = {
        "load": 180.0,
        "mains": 1.0,
        "vib": 12.0,
        "motor": 90.0,
        "fluid": 600.0,
    }
    _LOAD_CYCLE_S = 1200.0

    def __init__(self, seed: int, period: float) -> None:
        self._seed = seed
        self._period = period
        self._a = {key: _decay(period, tau) for key, tau in self._TAUS.items()}
        self._lags = {key: _Lag(a) for key, a in self._a.items()}
        self._scratch = np.empty((CHUNK, CHUNK))  # one lag's matrix at a time
        init = np.random.default_rng([seed, 2**32 - 1])
        self._phase = float(init.uniform(0, 2 * math.pi))
        start = init.standard_normal(4)
        self._state = {
            "load": 0.7 * start[0],
            "mains": start[1],
            "vib1": start[2],
            "vib2": start[3],
        }
        load0 = math.sin(self._phase) + self._state["load"]
        self._state |= {"motor": load0, "fluid": load0}
        self._chunk = 0

    def next_chunk(self) -> NDArray[np.float64]:
        """The next ``CHUNK`` healthy readings, float64 ``[CHUNK, 8]``."""
        rng = np.random.default_rng([self._seed, self._chunk])
        shocks = rng.standard_normal((CHUNK, 4))
        white = rng.standard_normal((CHUNK, len(CHANNELS)))
        t = (self._chunk * CHUNK + np.arange(CHUNK)) * self._period
        self._chunk += 1
        load = np.sin(2 * math.pi * t / self._LOAD_CYCLE_S + self._phase) + self._ou(
            "load", "load", 0.7, shocks[:, 0]
        )
        mains = self._ou("mains", "mains", 1.0, shocks[:, 1])
        vib1 = self._ou("vib1", "vib", 1.0, shocks[:, 2])
        vib2 = self._ou("vib2", "vib", 1.0, shocks[:, 3])
        motor = self._follow("motor", load)
        fluid = self._follow("fluid", load)
        m = NOMINAL_MEAN
        columns = (
            m["accelerometer1rms"] + 0.0030 * load + 0.0032 * vib1 + 0.0008 * white[:, 0],
            m["accelerometer2rms"] - 0.0024 * load + 0.0028 * vib2 + 0.0008 * white[:, 1],
            m["current"] + 0.12 * load + 0.30 * mains + 0.36 * white[:, 2],
            _quantise_pressure(m["pressure"] + 0.05 * load + 0.24 * white[:, 3]),
            m["temperature"] - 0.75 * motor + 0.12 * white[:, 4],
            m["thermocouple"] + 1.6 * fluid + 0.01 * white[:, 5],
            m["voltage"] + 7.5 * mains + 8.0 * white[:, 6],
            m["volume_flow_raterms"] + 1.3 * load + 0.6 * white[:, 7],
        )
        return np.column_stack(columns)

    def _ou(
        self, state: str, tau: str, sd: float, shocks: NDArray[np.float64]
    ) -> NDArray[np.float64]:
        """Ornstein-Uhlenbeck process with stationary std ``sd``."""
        a = self._a[tau]
        x = self._lags[tau].run(
            self._state[state], math.sqrt(1 - a * a) * sd * shocks, self._scratch
        )
        self._state[state] = float(x[-1])
        return x

    def _follow(self, state: str, target: NDArray[np.float64]) -> NDArray[np.float64]:
        """First-order lag towards ``target`` (thermal inertia)."""
        a = self._a[state]
        x = self._lags[state].run(self._state[state], (1 - a) * target, self._scratch)
        self._state[state] = float(x[-1])
        return x


def _quantise_pressure(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return PRESSURE_BASE + np.round((x - PRESSURE_BASE) / PRESSURE_STEP) * PRESSURE_STEP


class PumpSimulator:
    """A never-ending simulated pump stream (see the module doc), paced by the caller's clock."""

    def __init__(
        self,
        *,
        seed: int,
        rate_hz: float = 1.0,
        speed: float = 1.0,
        wall_start: float,
        faults: Sequence[Fault] = (),
        max_block: int = DEFAULT_MAX_BLOCK,
    ) -> None:
        if not (math.isfinite(rate_hz) and rate_hz > 0):
            raise SourceError(f"rate_hz must be a finite number > 0, got {rate_hz!r}")
        if seed < 0:
            raise SourceError(f"seed must be >= 0, got {seed}")
        self._seed = seed
        self._period = 1.0 / rate_hz
        self._pacer = Pacer(period=self._period, speed=speed, max_block=max_block)
        self._wall_start = wall_start
        self._model = _PumpModel(seed, self._period)
        self._faults = list(faults)
        self._windows = [self._index_window(fault) for fault in self._faults]
        self._stuck_at: dict[int, float] = {}
        self._pending = np.empty((0, len(CHANNELS)), dtype=np.float32)
        self._generated = 0
        self._emitted = 0

    @property
    def channels(self) -> list[str]:
        """The 8 SKAB channel names."""
        return list(CHANNELS)

    @property
    def period(self) -> float:
        """Seconds between readings (1 / rate_hz)."""
        return self._period

    @property
    def exhausted(self) -> bool:
        """Always False: the simulator never runs out."""
        return False

    @property
    def faults(self) -> list[Fault]:
        """The injected faults."""
        return list(self._faults)

    def start(self, now: float, wall: float) -> None:
        """Pace from monotonic ``now``; stamp the first reading ``wall`` (the node calls this as
        its loop starts, so that start-up time does not put the timestamps behind)."""
        self._pacer.start(now)
        self._wall_start = wall

    def poll(self, now: float) -> Block | None:
        """The readings due by monotonic time ``now``, or None."""
        n = self._pacer.due(now, self._emitted)
        return self.read(n) if n > 0 else None

    def read(self, n: int) -> Block:
        """The next ``n`` readings regardless of pacing (for tools that build data sets)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        if len(self._pending) < n:
            needed = math.ceil((n - len(self._pending)) / CHUNK)
            chunks = [self._next_chunk() for _ in range(needed)]
            self._pending = np.concatenate([self._pending, *chunks])
        values, self._pending = self._pending[:n], self._pending[n:]
        block = Block(
            t0=self._wall_start + self._emitted * self._period, period=self._period, values=values
        )
        self._emitted += n
        return block

    def stats(self) -> SourceStats | None:
        """None: no device connection behind this source."""
        return None

    def close(self) -> None:
        """Nothing to release."""

    def fault_labels(self, first: int, n: int) -> NDArray[np.bool_]:
        """True for each of readings ``first .. first + n - 1`` inside any fault's window."""
        index = np.arange(first, first + n)
        labels = np.zeros(n, dtype=bool)
        for start, stop in self._windows:
            labels |= (index >= start) & (index < stop)
        return labels

    def _index_window(self, fault: Fault) -> tuple[int, int]:
        # Readings i with start_s <= i * period < end; the slack absorbs float rounding.
        start = math.ceil(fault.start_s / self._period - 1e-9)
        stop = math.ceil((fault.start_s + fault.duration_s) / self._period - 1e-9)
        return start, max(stop, start)

    def _next_chunk(self) -> NDArray[np.float32]:
        chunk = self._model.next_chunk()
        first = self._generated
        healthy = chunk.copy()
        for i, fault in enumerate(self._faults):
            self._apply(i, fault, first, chunk, healthy)
        self._generated += CHUNK
        return chunk.astype(np.float32)

    def _apply(
        self,
        i: int,
        fault: Fault,
        first: int,
        chunk: NDArray[np.float64],
        healthy: NDArray[np.float64],
    ) -> None:
        start, stop = self._windows[i]
        col = CHANNELS.index(fault.channel)
        ref = max(start - 1, 0)
        if fault.kind == "stuck" and first <= ref < first + CHUNK:
            self._stuck_at[i] = float(healthy[ref - first, col])
        index = np.arange(first, first + CHUNK)
        active = (index >= start) & (index < stop)
        size = fault.magnitude * NOMINAL_SD[fault.channel]
        if fault.kind == "offset":
            progress = (index * self._period - fault.start_s) / fault.duration_s
            chunk[index >= start, col] += size * np.minimum(progress, 1.0)[index >= start]
            return
        if not active.any():
            return
        if fault.kind == "drift":
            progress = (index * self._period - fault.start_s) / fault.duration_s
            chunk[active, col] += size * progress[active]
        elif fault.kind == "spike":
            rng = np.random.default_rng([self._seed, first // CHUNK, 1 + i])
            hit = (rng.random(CHUNK) < SPIKE_PROBABILITY) | (index == start)
            sign = np.where(rng.random(CHUNK) < 0.5, -1.0, 1.0)
            chunk[active & hit, col] += (size * sign)[active & hit]
        elif fault.kind == "stuck":
            chunk[active, col] = self._stuck_at[i]
        else:
            chunk[active, col] = np.nan
