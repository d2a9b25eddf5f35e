"""Process and board readings: the only edge module that reads psutil and powercap.

On Linux the readings come from ``/proc`` (and CPU time from ``os.times``); psutil is imported
only where ``/proc`` is missing: on Linux it would cost the node ~1.5 MB of memory for numbers
the kernel gives in one file read.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_RAPL = Path("/sys/class/powercap/intel-rapl:0/energy_uj")
_RAPL_MAX = Path("/sys/class/powercap/intel-rapl:0/max_energy_range_uj")
_STATM = Path("/proc/self/statm")
_MEMINFO = Path("/proc/meminfo")
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


@dataclass(frozen=True, slots=True)
class ProcSample:
    rss_bytes: int
    cpu_percent: float  # of one core, over the interval since the last sample
    busy_cores: float
    rapl_watts: float | None  # whole CPU package, when the kernel exposes RAPL


class ProcessSampler:
    """Samples this process's memory and CPU, and the RAPL energy counter when readable."""

    def __init__(self) -> None:
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
            rss_bytes=rss_bytes(),
            cpu_percent=100.0 * busy,
            busy_cores=busy,
            rapl_watts=self._rapl_watts(elapsed),
        )

    @staticmethod
    def _cpu_seconds() -> float:
        times = os.times()
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


def rss_bytes() -> int:
    """Resident memory of this process."""
    try:
        return int(_STATM.read_text().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        import psutil

        return int(psutil.Process().memory_info().rss)


def machine_memory() -> tuple[int, int]:
    """(total, available) bytes of memory of the machine."""
    try:
        fields = dict(line.split(":", 1) for line in _MEMINFO.read_text().splitlines())
        total, available = (int(fields[k].split()[0]) * 1024 for k in ("MemTotal", "MemAvailable"))
    except (OSError, ValueError, KeyError):
        import psutil

        memory = psutil.virtual_memory()
        return int(memory.total), int(memory.available)
    return total, available


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None
