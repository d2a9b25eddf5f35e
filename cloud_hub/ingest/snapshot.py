"""What the hub keeps of its ingest state, as bytes and values for its store; pure, no I/O.

A node's snapshot holds its totals, status, latest reports and reading coverage; a stream's
holds the seqs seen of one boot (the dedupe state). Both are MessagePack, versioned by the
msgspec evolution rules (new fields get defaults), so a newer hub reads an older store. The
part of a snapshot that changes with nearly every message is also kept apart, as the values
of a ``node_live`` row (:func:`dump_live`; see cloud_hub.store.rows), so that a result batch
rewrites ~100 bytes of its node rather than the whole ~1 KB snapshot; so is its telemetry
(:func:`dump_health`, a ``node_health`` row), which changes every telemetry interval.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import msgspec

from cloud_hub.ingest.coverage import DEFAULT_MAX_INTERVALS, BootCoverages, Coverage
from cloud_hub.ingest.fleet import DriftSummary, NodeState, TelemetrySummary, summarize_telemetry
from schemas.messages import Capabilities, ModelRef, Range, Telemetry


class StoredCoverage(msgspec.Struct, array_like=True):
    intervals: list[Range]
    abandoned: int = 0


class StoredNode(msgspec.Struct, kw_only=True):
    node: str
    online: bool | None = None
    status_ts: float = -math.inf
    boot: str = ""
    started_at: float | None = None
    last_seen: float | None = None
    capabilities: Capabilities | None = None
    model: ModelRef | None = None
    readings: int = 0
    anomalous: int = 0
    events_opened: int = 0
    events_closed: int = 0
    telemetry: Telemetry | None = None  # written by hubs before TelemetrySummary; read only
    drift: DriftSummary | None = None
    coverage: dict[str, StoredCoverage] = {}
    retired_missing: int = 0
    health: TelemetrySummary | None = None
    dropped_seen: int = 0
    errors_seen: int = 0
    threshold: float = 0.0


_encoder = msgspec.msgpack.Encoder()
# Fields stored under another name, or not at all (``telemetry`` of older stores).
_RENAMED = frozenset({"coverage", "telemetry", "health"})
_node_decoder = msgspec.msgpack.Decoder(StoredNode)
_coverage_decoder = msgspec.msgpack.Decoder(StoredCoverage)
_health_decoder = msgspec.msgpack.Decoder(TelemetrySummary)


def dump_coverage(coverage: Coverage) -> bytes:
    """A stream's coverage as stored bytes (a :class:`StoredCoverage`: an array_like struct
    is a MessagePack array, so a tuple of its fields encodes to the same bytes, without the
    struct made per stream and commit)."""
    return _encoder.encode((coverage.intervals(), coverage.abandoned))


def load_coverage(data: bytes, max_intervals: int = DEFAULT_MAX_INTERVALS) -> Coverage:
    """The coverage stored by :func:`dump_coverage`."""
    stored = _coverage_decoder.decode(data)
    return Coverage.of(stored.intervals, stored.abandoned, max_intervals)


def dump_node(state: NodeState) -> bytes:
    """A node's state as stored bytes."""
    fields = {f: getattr(state, f) for f in StoredNode.__struct_fields__ if f not in _RENAMED}
    coverage = {
        boot: StoredCoverage(c.intervals(), c.abandoned) for boot, c in state.coverage.items()
    }
    return _encoder.encode(StoredNode(**fields, coverage=coverage, health=state.telemetry))


def dump_live(state: NodeState, now: float) -> tuple[object, ...]:
    """The part of a node's state that changes with nearly every message, as the values of
    its ``node_live`` row: node, last seen, counters, threshold, ``now`` (the registry's
    ``updated_at``), and the newest boot with its reading coverage (the others change only
    when a late batch of an older boot arrives, and then the whole snapshot is written)."""
    coverage = state.coverage
    boot = next(reversed(coverage), "")
    current = coverage.get(boot)
    data = None if current is None else dump_coverage(current)
    return (
        state.node, state.last_seen, state.readings, state.anomalous, state.events_opened,
        state.events_closed, state.threshold, now, boot, data,
    )  # fmt: skip


def dump_health(state: NodeState) -> tuple[object, ...] | None:
    """A node's telemetry and what its counters grew by, as the values of its ``node_health``
    row (None before its first telemetry)."""
    telemetry = state.telemetry
    if telemetry is None:
        return None
    return (
        state.node, _encoder.encode(telemetry), state.dropped_seen, state.errors_seen,
        telemetry.latency_p99_ms, telemetry.outbox_depth,
    )  # fmt: skip


def load_node(data: bytes, parts: Sequence[Any] = ()) -> NodeState:
    """The node state stored by :func:`dump_node`, with its newer parts when given: ``parts``
    is (last seen, readings, anomalous, events opened, events closed, threshold, boot,
    coverage) as read from its ``node_live`` row, then (telemetry, dropped seen, errors seen)
    from its ``node_health`` row; each all None when the node has no such row."""
    state = _load_whole(data)
    if parts and parts[1] is not None:
        (
            state.last_seen, state.readings, state.anomalous, state.events_opened,
            state.events_closed, state.threshold, boot, cov,
        ) = parts[:8]  # fmt: skip
        if cov is not None:
            # The newest boot stays the last one (the order fleet state keeps boots in).
            state.coverage.pop(boot, None)
            state.coverage[boot] = load_coverage(bytes(cov))
    if len(parts) > 8 and parts[8] is not None:
        state.telemetry = _health_decoder.decode(bytes(parts[8]))
        state.dropped_seen, state.errors_seen = parts[9], parts[10]
    return state


def _load_whole(data: bytes) -> NodeState:
    stored = _node_decoder.decode(data)
    fields = {f: getattr(stored, f) for f in StoredNode.__struct_fields__ if f not in _RENAMED}
    health = stored.health
    if health is None and stored.telemetry is not None:
        health = summarize_telemetry(stored.telemetry)
    state = NodeState(**fields, telemetry=health)
    state.coverage = BootCoverages(
        {
            boot: Coverage.of(c.intervals, c.abandoned, DEFAULT_MAX_INTERVALS)
            for boot, c in stored.coverage.items()
        }
    )
    return state
