"""Conventions of the command protocol shared by node and hub (pure).

Deploy, step by step:

1. The hub publishes ``Deploy`` (manifest, size, chunk_size, chunks) on ``edgeml/v1/{node}/cmd``.
2. The node checks it (expiry, duplicate id, manifest against its sensors), subscribes to
   ``edgeml/v1/models/{name}/{version}/+`` and answers ``Ack(status="accepted")`` whose
   ``detail[NEED]`` lists the chunk indexes it still needs, as ranges (``"0-3,7"``).
3. The hub publishes exactly those chunks as ``ModelChunk`` messages. A node that has waited
   ``chunk_timeout`` without progress asks again (another accepted ack with a shorter NEED),
   a bounded number of times, then fails the command.
4. With every chunk in hand the node checks the sha256 of the artifact against the manifest,
   installs it, loads, checks and warms it up while the old model goes on scoring, switches,
   and answers ``Ack(status="applied", model=...)``; otherwise ``failed`` with the reason.
5. A model that misbehaves just after the switch is rolled back: ``Ack(status="failed")`` for
   the same command, reason starting with ``"rolled back"``.

Every command: an expired one (``expires_at`` before the node's clock) is ``rejected``; a command
id seen before is not applied again: the node repeats its last ack for it with
``detail[DUPLICATE] = "true"``.
"""

from __future__ import annotations

from typing import Final

NEED: Final = "need"
RECEIVED: Final = "received"
DUPLICATE: Final = "duplicate"
UPTIME_S: Final = "uptime_s"
READINGS: Final = "readings"
CHUNKS: Final = "chunks"

DEFAULT_CHUNK_SIZE: Final = 64 * 1024


def split_artifact(data: bytes, chunk_size: int = DEFAULT_CHUNK_SIZE) -> list[bytes]:
    """The artifact's chunks, in order (at least one, even for an empty artifact)."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return [data[i : i + chunk_size] for i in range(0, len(data), chunk_size)] or [b""]


def format_ranges(indexes: list[int] | set[int]) -> str:
    """``[0, 1, 2, 5, 7, 8]`` -> ``"0-2,5,7-8"``."""
    parts: list[str] = []
    ordered = sorted(set(indexes))
    start = prev = None
    for i in ordered:
        if start is None:
            start = prev = i
        elif prev is not None and i == prev + 1:
            prev = i
        else:
            parts.append(_span(start, prev))
            start = prev = i
    if start is not None:
        parts.append(_span(start, prev))
    return ",".join(parts)


def parse_ranges(text: str, limit: int) -> list[int]:
    """Inverse of :func:`format_ranges`; every index must be below ``limit``."""
    out: set[int] = set()
    for part in filter(None, (p.strip() for p in text.split(","))):
        first, dash, last = part.partition("-")
        try:
            lo, hi = int(first), int(last if dash else first)
        except ValueError:
            raise ValueError(f"bad chunk range {part!r} in {text!r}") from None
        if lo < 0 or hi < lo or hi >= limit:
            raise ValueError(f"chunk range {part!r} outside 0-{limit - 1}")
        out.update(range(lo, hi + 1))
    return sorted(out)


def _span(start: int, end: int | None) -> str:
    return str(start) if end is None or end == start else f"{start}-{end}"
