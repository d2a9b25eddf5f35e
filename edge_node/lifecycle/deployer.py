"""Assembling a model artifact from its chunks (pure; time comes in as ``now``).

The hub sends the chunks an accepted ack asks for (schemas/commands.py, steps 2-4). Chunks can
come twice, out of order, or not at all: the assembly keeps what it has, says what it still
needs, asks again after a quiet spell a bounded number of times, and finally checks the whole
artifact against the size and sha256 the deploy promised.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from enum import Enum

from schemas.commands import format_ranges
from schemas.messages import ModelChunk, ModelRef


class AssemblyError(Exception):
    """The artifact cannot be completed or is not what the deploy promised."""


class ChunkOutcome(Enum):
    NEW = "new"
    DUPLICATE = "duplicate"
    FOREIGN = "foreign"  # a chunk of another model (or another deploy of it)
    INVALID = "invalid"


@dataclass(frozen=True)
class Ask:
    """Ask the hub again for these chunks (it has been quiet for ``timeout_s``)."""

    need: list[int]


@dataclass(frozen=True)
class Spec:
    """What the deploy promised about its artifact."""

    model: ModelRef
    size: int
    chunks: int
    sha256: str


class Assembly:
    """Chunks of one artifact collected so far, with the retry clock."""

    def __init__(self, spec: Spec, *, now: float, timeout_s: float, retries: int) -> None:
        if timeout_s <= 0 or retries < 0:
            raise ValueError(f"timeout_s must be > 0 and retries >= 0, got {timeout_s}, {retries}")
        self.spec = spec
        self.timeout_s = timeout_s
        self.retries = retries
        self.asks = 0  # re-asks so far (the first ask is the accepted ack itself)
        self._parts: dict[int, bytes] = {}
        self._last_progress = now

    @property
    def complete(self) -> bool:
        """Every chunk is in."""
        return len(self._parts) == self.spec.chunks

    def need(self) -> list[int]:
        """Chunk indexes still missing, ascending."""
        return [i for i in range(self.spec.chunks) if i not in self._parts]

    def need_text(self) -> str:
        """The missing chunks as ranges (``"0-3,7"``), as acks carry them."""
        return format_ranges(self.need())

    def add(self, chunk: ModelChunk, now: float) -> ChunkOutcome:
        """Keep ``chunk`` if it belongs here and is new; a new chunk restarts the retry clock."""
        if chunk.model != self.spec.model:
            return ChunkOutcome.FOREIGN
        if chunk.chunks != self.spec.chunks or chunk.index >= self.spec.chunks:
            return ChunkOutcome.INVALID
        if chunk.index in self._parts:
            return ChunkOutcome.DUPLICATE
        self._parts[chunk.index] = chunk.data
        self._last_progress = now
        return ChunkOutcome.NEW

    def tick(self, now: float) -> Ask | None:
        """An :class:`Ask` when the hub has been quiet too long; AssemblyError when out of asks."""
        if self.complete or now - self._last_progress < self.timeout_s:
            return None
        if self.asks >= self.retries:
            raise AssemblyError(
                f"chunks {self.need_text()} never arrived "
                f"(asked {self.asks + 1} times, {self.timeout_s:g} s apart)"
            )
        self.asks += 1
        self._last_progress = now
        return Ask(self.need())

    def artifact(self) -> bytes:
        """The whole artifact, checked against the promised size and sha256."""
        if not self.complete:
            raise AssemblyError(f"chunks {self.need_text()} are still missing")
        data = b"".join(self._parts[i] for i in range(self.spec.chunks))
        if len(data) != self.spec.size:
            raise AssemblyError(
                f"size mismatch: the chunks hold {len(data)} bytes, the deploy says "
                f"{self.spec.size}"
            )
        digest = hashlib.sha256(data).hexdigest()
        if digest != self.spec.sha256:
            raise AssemblyError(
                f"sha256 mismatch: artifact corrupt (chunks hash to {digest}, "
                f"the manifest says {self.spec.sha256})"
            )
        return data
