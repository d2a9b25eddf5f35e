"""Fleet-wide sums of the per-node numbers the hub exports (pure: no I/O, no prometheus_client).

The metrics collector (cloud_hub.ingest.metrics) copies each node's numbers into a
:class:`NodeSnapshot` under the hub's lock, then renders per-node series and these totals.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from cloud_hub.ingest.fleet import DriftSummary, TelemetrySummary
from schemas.messages import ModelRef


@dataclass(frozen=True, slots=True)
class NodeSnapshot:
    """One node's numbers at scrape time (telemetry and drift are replaced, never changed)."""

    node: str
    online: bool
    readings: int
    anomalous: int
    events_opened: int
    events_closed: int
    model: ModelRef | None
    telemetry: TelemetrySummary | None
    drift: DriftSummary | None
    gaps: int
    missing: int
    errors: int
    group: str = ""  # the bounded label (fleet_series.GroupLabels)
    last_seen: float | None = None
    dropped_seen: int = 0
    errors_seen: int = 0
    threshold: float = 0.0


@dataclass
class FleetTotals:
    """Sums over nodes; node counts by active model (name, version) and by drift state; open
    episodes by kind."""

    readings: int = 0
    anomalous: int = 0
    opened: int = 0
    closed: int = 0
    gaps: int = 0
    missing: int = 0
    errors: int = 0  # as the nodes last reported, each since its own boot
    dropped: int = 0  # likewise
    models: Counter[tuple[str, str]] = field(default_factory=Counter)
    drift: Counter[str] = field(default_factory=Counter)
    open_episodes: Counter[str] = field(default_factory=Counter)


def fleet_totals(
    snapshots: list[NodeSnapshot], open_counts: list[tuple[tuple[str, str], int]]
) -> FleetTotals:
    """The totals of ``snapshots``; ``open_counts`` are open episodes by (node, kind)."""
    t = FleetTotals()
    for s in snapshots:
        t.readings += s.readings
        t.anomalous += s.anomalous
        t.opened += s.events_opened
        t.closed += s.events_closed
        t.gaps += s.gaps
        t.missing += s.missing
        if s.telemetry is not None:
            t.errors += s.errors
            t.dropped += s.telemetry.dropped
        if s.model is not None:
            t.models[(s.model.name, s.model.version)] += 1
        if s.drift is not None and s.drift.state is not None:
            t.drift[s.drift.state.level] += 1
    for (_, kind), count in open_counts:
        t.open_episodes[kind] += count
    return t
