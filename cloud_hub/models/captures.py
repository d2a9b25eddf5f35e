"""Assembling captured readings from their chunks (pure: no disk, no clock).

A retrain command makes the node upload the readings it captured as ``Capture`` chunks
``0 .. chunks-1``; they may arrive out of order and more than once. The readings are complete
when every index is in; rows are then stacked in chunk order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from schemas.messages import Capture
from schemas.packing import unpack_f32

F32 = NDArray[np.float32]


class CaptureError(ValueError):
    """A chunk that does not belong with the others; the message names the field."""


@dataclass(frozen=True, eq=False)  # arrays have no single truth value to compare by
class CaptureData:
    """The readings one retrain command captured: ``values`` is float32 ``[n, channels]``."""

    command: str
    node: str
    channels: list[str]
    t0: float
    period: float
    values: F32


class CaptureAssembly:
    """The chunks of one command's capture received so far."""

    def __init__(self, command: str, node: str) -> None:
        self.command = command
        self.node = node
        self._chunks: dict[int, Capture] = {}
        self._first: Capture | None = None

    @property
    def chunks(self) -> int | None:
        """How many chunks the capture has (None before the first arrives)."""
        return self._first.chunks if self._first is not None else None

    @property
    def received(self) -> int:
        """How many distinct chunks arrived."""
        return len(self._chunks)

    @property
    def readings(self) -> int:
        """How many readings the chunks received so far hold."""
        return sum(chunk.n for chunk in self._chunks.values())

    @property
    def complete(self) -> bool:
        """True once every chunk is in."""
        return self._first is not None and len(self._chunks) == self._first.chunks

    def missing(self) -> list[int]:
        """Indexes not received yet (empty before the first chunk: the count is unknown)."""
        total = self.chunks or 0
        return [i for i in range(total) if i not in self._chunks]

    def add(self, chunk: Capture) -> bool:
        """Add one chunk; False for a repeat of one already in; CaptureError if it does not fit."""
        self._check(chunk)
        held = self._chunks.get(chunk.chunk)
        if held is not None:
            if held.data != chunk.data or held.n != chunk.n:
                raise CaptureError(
                    f"capture {self.command}: chunk {chunk.chunk} arrived twice with different data"
                )
            return False
        self._first = self._first or chunk
        self._chunks[chunk.chunk] = chunk
        return True

    def assemble(self) -> CaptureData:
        """The readings in order; CaptureError while chunks are missing."""
        if self._first is None or not self.complete:
            raise CaptureError(f"capture {self.command}: chunks {self.missing()} are missing")
        columns = len(self._first.channels)
        parts = [_rows(self._chunks[i], columns) for i in range(self._first.chunks)]
        return CaptureData(
            command=self.command,
            node=self.node,
            channels=list(self._first.channels),
            t0=self._chunks[0].t0,
            period=self._first.period,
            values=np.concatenate(parts) if parts else np.zeros((0, columns), np.float32),
        )

    def _check(self, chunk: Capture) -> None:
        where = f"capture {self.command} chunk {chunk.chunk}"
        if chunk.command != self.command:
            raise CaptureError(f"{where}: field 'command' is {chunk.command!r}")
        if chunk.node != self.node:
            raise CaptureError(f"{where}: field 'node' is {chunk.node!r}, not {self.node!r}")
        if len(chunk.data) != 4 * chunk.n * len(chunk.channels):
            raise CaptureError(
                f"{where}: field 'data' has {len(chunk.data)} bytes for {chunk.n} readings "
                f"of {len(chunk.channels)} channels"
            )
        if chunk.chunk >= chunk.chunks:
            raise CaptureError(f"{where}: field 'chunk' is not below chunks {chunk.chunks}")
        first = self._first
        if first is None:
            return
        for name in ("chunks", "channels", "period"):
            if getattr(chunk, name) != getattr(first, name):
                raise CaptureError(
                    f"{where}: field {name!r} is {getattr(chunk, name)!r}, "
                    f"chunk {first.chunk} said {getattr(first, name)!r}"
                )


def _rows(chunk: Capture, columns: int) -> F32:
    return unpack_f32(chunk.data).reshape(chunk.n, columns)
