"""What the hub keeps of its ingest state, as bytes for its store; pure, no I/O.

A node's snapshot holds its totals, status, latest reports and reading coverage; a stream's
holds the seqs seen of one boot (the dedupe state). Both are MessagePack, versioned by the
msgspec evolution rules (new fields get defaults), so a newer hub reads an older store.
"""

from __future__ import annotations

import math

import msgspec

from cloud_hub.ingest.dedupe import DEFAULT_MAX_INTERVALS, Coverage
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


def dump_coverage(coverage: Coverage) -> bytes:
    """A stream's coverage as stored bytes."""
    return _encoder.encode(StoredCoverage(coverage.intervals(), coverage.abandoned))


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


def load_node(data: bytes) -> NodeState:
    """The node state stored by :func:`dump_node`."""
    stored = _node_decoder.decode(data)
    fields = {f: getattr(stored, f) for f in StoredNode.__struct_fields__ if f not in _RENAMED}
    health = stored.health
    if health is None and stored.telemetry is not None:
        health = summarize_telemetry(stored.telemetry)
    state = NodeState(**fields, telemetry=health)
    state.coverage = {
        boot: Coverage.of(c.intervals, c.abandoned, DEFAULT_MAX_INTERVALS)
        for boot, c in stored.coverage.items()
    }
    return state
