"""Process and board readings: the only edge module that reads psutil and powercap."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

log = logging.getLogger(__name__)

_RAPL = Path("/sys/class/powercap/intel-rapl:0/energy_uj")
_RAPL_MAX = Path("/sys/class/powercap/intel-rapl:0/max_energy_range_uj")


@dataclass(frozen=True, slots=True)
class ProcSample:
    rss_bytes: int
    cpu_percent: float  # of one core, over the interval since the last sample
    busy_cores: float
    rapl_watts: float | None  # whole CPU package, when the kernel exposes RAPL


class ProcessSampler:
    """Samples this process's memory and CPU, and the RAPL energy counter when readable."""

    def __init__(self) -> None:
        self._proc = psutil.Process()
        self._last_cpu = self._cpu_seconds()
        self._last_wall = time.monotonic()
        self._last_energy = _read_int(_RAPL)
        self._energy_range = _read_int(_RAPL_MAX)

    def sample(self) -> ProcSample:
        """Readings since the previous call."""
        cpu, wall = self._cpu_seconds(), time.monotonic()
        elapsed = max(wall - self._last_wall, 1e-9)
        busy = (cpu - self._last_cpu) / elapsed
        self._last_cpu, self._last_wall = cpu, wall
        return ProcSample(
            rss_bytes=int(self._proc.memory_info().rss),
            cpu_percent=100.0 * busy,
            busy_cores=busy,
            rapl_watts=self._rapl_watts(elapsed),
        )

    def _cpu_seconds(self) -> float:
        times = self._proc.cpu_times()
        return float(times.user + times.system)

    def _rapl_watts(self, elapsed: float) -> float | None:
        energy = _read_int(_RAPL)
        last, self._last_energy = self._last_energy, energy
        if energy is None or last is None:
            return None
        delta = energy - last
        if delta < 0 and self._energy_range:
            delta += self._energy_range  # the counter wrapped
        return delta / 1e6 / elapsed


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
