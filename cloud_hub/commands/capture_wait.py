"""How long ``cloud-hub retrain`` waits for a capture, and what its progress line says (pure).

A node captures the next ``R`` readings at its own sample rate and uploads them once it has
them all, so a capture of 3600 readings on a 10 Hz node takes 360 s before its first chunk.
The wait follows that: the deadline is the capture's expected duration (from the rate the node
announced at birth) plus ``--timeout`` as slack, and every chunk that arrives pushes it to at
least ``--timeout`` past that chunk, so a slow upload is not cut off half-way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from schemas.messages import Capabilities


def sample_rate(capabilities: Capabilities | None) -> float | None:
    """The node's announced readings per second (None when unknown or not positive)."""
    if capabilities is None or not capabilities.sample_hz > 0:
        return None
    return float(capabilities.sample_hz)


def capture_duration_s(readings: int, mode: Literal["next", "last"], rate: float | None) -> float:
    """Seconds the node needs to collect ``readings``: 0 for ``last`` (already buffered) or an
    unknown rate (then only the timeout bounds the wait)."""
    if mode == "last" or rate is None:
        return 0.0
    return readings / rate


@dataclass
class CaptureWait:
    """The deadline of one capture and the text of its progress line."""

    started: float
    readings: int
    rate: float | None
    timeout: float
    deadline: float

    @classmethod
    def start(
        cls,
        now: float,
        readings: int,
        mode: Literal["next", "last"],
        rate: float | None,
        timeout: float,
    ) -> CaptureWait:
        """The wait for a capture asked for at ``now``."""
        duration = capture_duration_s(readings, mode, rate)
        return cls(
            now, readings, rate if mode == "next" else None, timeout, now + duration + timeout
        )

    def on_chunk(self, now: float) -> None:
        """A chunk arrived: the upload is alive, so give it at least ``timeout`` more."""
        self.deadline = max(self.deadline, now + self.timeout)

    def expired(self, now: float) -> bool:
        """True once the deadline has passed."""
        return now >= self.deadline

    def progress(self, now: float, accepted_at: float | None, uploaded: int) -> str:
        """``1200/3600 readings captured, 240 s left`` (an estimate from the rate until the
        upload starts: the node sends nothing while it collects)."""
        left = f"{max(self.deadline - now, 0.0):.0f} s left"
        if uploaded:
            return f"{uploaded}/{self.readings} readings uploaded, {left}"
        if self.rate is None or accepted_at is None:
            return f"0/{self.readings} readings captured, {left}"
        estimate = min(int((now - accepted_at) * self.rate), self.readings)
        return f"~{estimate}/{self.readings} readings captured, {left}"
