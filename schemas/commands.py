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

Shadow run (``Shadow``, then ``StopShadow`` or its ``duration_s`` ends it):

1. The hub publishes ``Shadow``: a deploy's fields (manifest, size, chunk_size, chunks) plus
   ``duration_s`` and ``cpu_budget`` (a share of one core). Its signature and its manifest's
   are checked as a deploy's; the candidate must fit the node beside the active model (their
   memory and power add up) and must not be the active model.
2. Chunks travel exactly as for a deploy (``accepted`` with ``detail[NEED]``, asked again).
3. The node installs the candidate without making it active (a later deploy of it finds it
   installed), loads it beside the active model, and answers ``applied`` when the run starts.
4. Every reading the active model scores is scored by the candidate too, with its own windows,
   sensor checks and alarm rule; the candidate raises no events, publishes no results and feeds
   no drift statistics. The node sends a ``ShadowReport`` (kind ``shadow``) every drift
   interval, and a final one whose ``state`` says how it ended: ``done`` (``duration_s`` is
   over), ``stopped`` (``StopShadow``, a new ``Shadow`` replacing it, a deploy of the candidate,
   or any switch of the active model; ``reason`` says which), ``over_budget`` (the candidate
   took more than ``cpu_budget`` of a core over a tenth of the run, at least 2 s and at most
   60 s), or ``failed`` (the candidate did not load or does not fit the sensors; the command's
   ack is ``failed`` with the same reason).
5. ``StopShadow`` is ``applied`` when it ended a run (or a fetch or load still under way: that
   shadow command is then ``failed: stopped by <id> before it started``), ``rejected`` with
   ``no shadow run in progress`` otherwise.

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
