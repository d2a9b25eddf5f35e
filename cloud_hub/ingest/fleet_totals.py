"""Fleet-wide sums of the per-node numbers the hub exports (pure: no I/O, no prometheus_client).

The metrics collector (cloud_hub.ingest.metrics) copies each node's numbers into a
:class:`NodeSnapshot` under the hub's lock, then renders per-node series and these totals
(summed in one pass with the group series: cloud_hub.ingest.fleet_series.aggregate).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from cloud_hub.ingest.fleet import DriftSummary, TelemetrySummary
from schemas.messages import ModelRef


@dataclass(slots=True)
class NodeSnapshot:
    """One node's numbers at scrape time (telemetry and drift are replaced, never changed).

    Not frozen: a frozen dataclass sets each field through object.__setattr__, and a scrape
    makes 10,000 of these under the hub's lock."""

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
