"""What the hub knows about each node, updated from decoded messages; pure, no I/O.

``last_seen`` is the hub's receive time, not the message's ``ts``: node clocks drift (a
board without a real-time clock can boot in 1970) and the hub's view of "silent for too
long" must not depend on them. A backlog of old messages delivered after the hub comes back
therefore counts as a sign of life; the retained status that comes with it corrects that.

Status ordering: a status is applied when its ``ts`` is not older than the status applied
before, so a will from an old boot that the broker fires after the new boot's birth is
ignored. One exception: an offline status of the boot already on record is always applied.
The node sets its will once per boot, when the boot starts, so its ``ts`` is older than the
birth of every later reconnect; it is still the newest news about that boot's connection.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from cloud_hub.ingest.dedupe import DEFAULT_MAX_BOOTS, Coverage
from cloud_hub.ingest.drift_state import DriftState, drift_state
from schemas.messages import (
    Capabilities,
    Drift,
    Event,
    ModelRef,
    ResultBatch,
    ScoreStats,
    ShadowReport,
    Status,
    Telemetry,
)


@dataclass(frozen=True, slots=True)
class DriftSummary:
    """The latest drift report of a node, reduced to what dashboards and alerts use."""

    model: ModelRef
    ts: float
    channels: dict[str, tuple[float, float]]
    score: ScoreStats
    psi_max: float
    psi_max_channel: str
    mean_shift_max_sd: float
    state: DriftState | None = None  # ok / watch / drifting with its reason (drift_state.py)


@dataclass(slots=True)
class NodeState:
    """One node as the hub sees it; counters are since the hub started."""

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
    telemetry: Telemetry | None = None
    drift: DriftSummary | None = None
    coverage: dict[str, Coverage] = field(default_factory=dict)
    retired_missing: int = 0

    @property
    def errors_total(self) -> int:
        """Errors the node reported since its boot, all kinds together."""
        return sum(self.telemetry.errors.values()) if self.telemetry else 0

    def missing_readings(self) -> int:
        """Readings never received between the first and last received, over all boots."""
        return self.retired_missing + sum(c.missing() for c in self.coverage.values())


def summarize_drift(drift: Drift) -> DriftSummary:
    """Keep per-channel PSI and mean shift and the maxima over channels."""
    channels = {c.channel: (c.psi, c.mean_shift_sd) for c in drift.channels}
    worst = max(drift.channels, key=lambda c: c.psi, default=None)
    shift = max((abs(c.mean_shift_sd) for c in drift.channels), default=0.0)
    return DriftSummary(
        model=drift.model,
        ts=drift.ts,
        channels=channels,
        score=drift.score,
        psi_max=worst.psi if worst else 0.0,
        psi_max_channel=worst.channel if worst else "",
        mean_shift_max_sd=shift,
        state=drift_state(drift),
    )


class FleetState:
    """Every node's state; ``take_dirty`` returns the nodes changed since it was last called."""

    def __init__(self, offline_after_s: float, max_boots: int = DEFAULT_MAX_BOOTS) -> None:
        self.offline_after_s = offline_after_s
        self._nodes: dict[str, NodeState] = {}
        self._dirty: set[str] = set()
        self._max_boots = max_boots
        self.shadows: dict[str, ShadowReport] = {}
        """The newest shadow report per node (``serve`` keeps them in the registry too)."""

    def node(self, node: str) -> NodeState | None:
        """The state of ``node``, or None if the hub never heard from it."""
        return self._nodes.get(node)

    def nodes(self) -> Iterator[NodeState]:
        """All known nodes, in the order they were first heard from."""
        return iter(list(self._nodes.values()))

    def __len__(self) -> int:
        return len(self._nodes)

    def restore(self, states: list[NodeState]) -> None:
        """Start from stored node states (before any message is applied)."""
        for state in states:
            self._nodes[state.node] = state

    def reload(self, states: list[NodeState], nodes: Iterable[str] | None = None) -> None:
        """Replace what is in memory of ``nodes`` (all: None) by their stored ``states``
        (a shared store: another hub may have written them since)."""
        names = set(self._nodes) if nodes is None else set(nodes)
        for node in names:
            self._nodes.pop(node, None)
        self._dirty -= names
        for state in states:
            self._nodes[state.node] = state

    def reading_coverage(self, node: str, boot: str) -> Coverage | None:
        """The readings received of one boot of ``node`` (None if none)."""
        state = self._nodes.get(node)
        return state.coverage.get(boot) if state else None

    def is_online(self, state: NodeState, now: float) -> bool:
        """Online unless its will was applied or it has been silent for ``offline_after_s``."""
        if state.online is False or state.last_seen is None:
            return False
        return now - state.last_seen <= self.offline_after_s

    def counts(self, now: float) -> tuple[int, int]:
        """``(online, offline)`` node counts at ``now``."""
        online = sum(1 for s in self._nodes.values() if self.is_online(s, now))
        return online, len(self._nodes) - online

    def missing_readings(self, node: str) -> int:
        """Readings never received for ``node`` (0 for an unknown node)."""
        state = self._nodes.get(node)
        return state.missing_readings() if state else 0

    def take_dirty(self) -> list[NodeState]:
        """Nodes changed since the last call (and forget that they changed)."""
        dirty = [self._nodes[n] for n in self._dirty]
        self._dirty.clear()
        return dirty

    def mark_dirty(self, states: list[NodeState]) -> None:
        """Report ``states`` again from the next ``take_dirty`` (their write failed)."""
        self._dirty.update(s.node for s in states)

    def touch(self, node: str, boot: str, now: float, *, alive: bool = True) -> NodeState:
        """Record that ``node`` was heard from at ``now`` (if ``alive``); create it if new."""
        state = self._nodes.get(node)
        if state is None:
            state = self._nodes[node] = NodeState(node)
        if alive:
            state.last_seen = now if state.last_seen is None else max(state.last_seen, now)
        if not state.boot:
            state.boot = boot
        self._dirty.add(node)
        return state

    def apply_status(self, status: Status, now: float) -> bool:
        """Apply a birth or will; False if it is older than the status on record."""
        # A will is published by the broker, not the node: it is no sign of life.
        state = self.touch(status.node, status.boot, now, alive=status.state == "online")
        same_boot_will = status.state == "offline" and status.boot == state.boot
        if status.ts < state.status_ts and not same_boot_will:
            return False
        state.online = status.state == "online"
        state.status_ts = max(state.status_ts, status.ts)
        state.boot = status.boot
        state.started_at = status.started_at
        if status.capabilities is not None:
            state.capabilities = status.capabilities
        if status.models:
            state.model = status.models[0]
        return True

    def apply_result(self, batch: ResultBatch, anomalous: int, now: float) -> None:
        """Count a batch of scored readings, ``anomalous`` of them flagged."""
        state = self.touch(batch.node, batch.boot, now)
        state.readings += batch.n
        state.anomalous += anomalous
        state.model = batch.model
        coverage = state.coverage.get(batch.boot)
        if coverage is None:
            coverage = state.coverage[batch.boot] = Coverage()
            self._forget_old_boots(state)
        coverage.add(batch.first, batch.first + batch.n)

    def apply_event(self, event: Event, now: float) -> None:
        """Count an anomaly episode opening or closing."""
        state = self.touch(event.node, event.boot, now)
        if event.state == "open":
            state.events_opened += 1
        else:
            state.events_closed += 1

    def apply_telemetry(self, telemetry: Telemetry, now: float) -> None:
        """Keep the newest telemetry report (by ``ts``)."""
        state = self.touch(telemetry.node, telemetry.boot, now)
        if state.telemetry is None or telemetry.ts >= state.telemetry.ts:
            state.telemetry = telemetry
            if telemetry.model is not None:
                state.model = telemetry.model

    def apply_drift(self, drift: Drift, now: float) -> None:
        """Keep the newest drift report (by ``ts``)."""
        state = self.touch(drift.node, drift.boot, now)
        if state.drift is None or drift.ts >= state.drift.ts:
            state.drift = summarize_drift(drift)

    def apply_shadow(self, report: ShadowReport, now: float) -> None:
        """Keep the newest shadow report (by ``ts``)."""
        self.touch(report.node, report.boot, now)
        kept = self.shadows.get(report.node)
        if kept is None or report.ts >= kept.ts:
            self.shadows[report.node] = report

    def _forget_old_boots(self, state: NodeState) -> None:
        while len(state.coverage) > self._max_boots:
            oldest = next(iter(state.coverage))
            state.retired_missing += state.coverage.pop(oldest).missing()
