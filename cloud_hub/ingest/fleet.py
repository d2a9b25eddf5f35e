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
import sys
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import msgspec

from cloud_hub.ingest.coverage import BootCoverages, Coverage
from cloud_hub.ingest.dedupe import DEFAULT_MAX_BOOTS
from cloud_hub.ingest.drift_state import DriftState, drift_state
from cloud_hub.ingest.shared_values import SharedValues
from schemas.messages import (
    Capabilities,
    Drift,
    Event,
    ModelRef,
    ResultBatch,
    ShadowReport,
    Status,
    Telemetry,
)


class TelemetrySummary(msgspec.Struct, frozen=True, gc=False):
    """The latest telemetry of a node, reduced to what the hub shows (metrics, registry).

    Counters are the node's, since its boot (``boot``); ``errors`` sums its error kinds."""

    ts: float
    boot: str
    latency_p50_ms: float
    latency_p95_ms: float
    latency_p99_ms: float
    rss_bytes: int
    cpu_percent: float
    power_w: float
    outbox_depth: int
    outbox_bytes: int
    dropped: int
    rollbacks: int
    errors: int


def summarize_telemetry(t: Telemetry) -> TelemetrySummary:
    """Keep the numbers the hub exports; drop per-kind dicts, source health and text."""
    latency = t.latency_ms
    return TelemetrySummary(
        t.ts, t.boot, latency.p50, latency.p95, latency.p99, t.rss_bytes, t.cpu_percent, t.power_w,
        t.outbox_depth, t.outbox_bytes, t.dropped, t.rollbacks, sum(t.errors.values()),
    )  # fmt: skip


class DriftSummary(msgspec.Struct, frozen=True, gc=False):
    """The latest drift report of a node, reduced to what dashboards and alerts use: the
    maxima over channels (never per channel: the culprit is in ``state``) and the score's p99.

    Not tracked by the garbage collector (16 bytes a node less): it holds no containers, so
    it can be in no reference cycle."""

    model: ModelRef
    ts: float
    psi_max: float
    psi_max_channel: str
    mean_shift_max_sd: float
    state: DriftState | None = None  # ok / watch / drifting with its reason (drift_state.py)
    score_p99: float = 0.0


@dataclass(slots=True)
class NodeState:
    """One node as the hub sees it; counters are since the hub started.

    Kept small (10,000 nodes per hub): reports are summaries, what the fleet shares (model
    refs, capabilities, their strings) is one object for all. ``dropped_seen`` and
    ``errors_seen`` count what the node's since-boot counters grew by while the hub watched
    (never reset by a reboot), so fleet and group sums of them are counters."""

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
    telemetry: TelemetrySummary | None = None
    drift: DriftSummary | None = None
    coverage: BootCoverages = field(default_factory=BootCoverages)
    retired_missing: int = 0
    dropped_seen: int = 0
    errors_seen: int = 0
    threshold: float = 0.0  # of the active model, from the latest result batch

    @property
    def group(self) -> str:
        """The group or site the node announced at birth ("" for none)."""
        return self.capabilities.group if self.capabilities is not None else ""

    def shared_ids(self, boot: str) -> tuple[str, str]:
        """The node's id, and ``boot`` as this state already holds it when it is the same (one
        string each per node rather than one per message kept)."""
        return self.node, self.boot if boot == self.boot else boot

    @property
    def errors_total(self) -> int:
        """Errors the node reported since its boot, all kinds together."""
        return self.telemetry.errors if self.telemetry else 0

    def missing_readings(self) -> int:
        """Readings never received between the first and last received, over all boots."""
        missing = self.retired_missing
        for coverage in self.coverage.values():  # a loop, not sum(): per node per scrape
            missing += coverage.missing()
        return missing


def summarize_drift(drift: Drift, model: ModelRef | None = None) -> DriftSummary:
    """Keep the maxima over channels, the score's p99 and the drift state (``model``: the
    fleet's shared copy of ``drift.model``)."""
    worst = max(drift.channels, key=lambda c: c.psi, default=None)
    shift = max((abs(c.mean_shift_sd) for c in drift.channels), default=0.0)
    return DriftSummary(
        model=model or drift.model,
        ts=drift.ts,
        psi_max=worst.psi if worst else 0.0,
        psi_max_channel=sys.intern(worst.channel) if worst else "",
        mean_shift_max_sd=shift,
        state=drift_state(drift),
        score_p99=drift.score.p99,
    )


# Model versions counted by name; beyond it (a misbehaving node inventing names) one "other".
MAX_MODEL_KEYS = 256


class ModelCounts:
    """Readings and anomalous readings per model version, counted as batches arrive."""

    def __init__(self, max_keys: int = MAX_MODEL_KEYS) -> None:
        self.readings: Counter[tuple[str, str]] = Counter()
        self.anomalous: Counter[tuple[str, str]] = Counter()
        self._max_keys = max_keys

    def add(self, name: str, version: str, readings: int, anomalous: int) -> None:
        """Count one batch of ``name``/``version``."""
        key = (name, version)
        if key not in self.readings and len(self.readings) >= self._max_keys:
            key = ("other", "other")
        self.readings[key] += readings
        self.anomalous[key] += anomalous


class FleetState:
    """Every node's state; ``take_dirty`` returns the nodes changed since it was last called."""

    def __init__(self, offline_after_s: float, max_boots: int = DEFAULT_MAX_BOOTS) -> None:
        self.offline_after_s = offline_after_s
        self._nodes: dict[str, NodeState] = {}
        self._dirty: set[str] = set()
        self._max_boots = max_boots
        self._shared = SharedValues()
        self.model_counts = ModelCounts()
        """Readings per model version since the hub started (in memory: counters may reset)."""
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
            self._adopt(state)

    def _adopt(self, state: NodeState) -> None:
        """Hold a stored state, sharing what the fleet's nodes have in common."""
        if state.capabilities is not None:
            state.capabilities = self._shared.capabilities(state.capabilities)
        if state.model is not None:
            state.model = self._shared.model(state.model)
        self._nodes[state.node] = state

    def reload(self, states: list[NodeState], nodes: Iterable[str] | None = None) -> None:
        """Replace what is in memory of ``nodes`` (all: None) by their stored ``states``
        (a shared store: another hub may have written them since)."""
        names = set(self._nodes) if nodes is None else set(nodes)
        for node in names:
            self._nodes.pop(node, None)
        self._dirty -= names
        for state in states:
            self._adopt(state)

    def shared_model(self, ref: ModelRef) -> ModelRef:
        """The fleet's one copy of ``ref`` (kept, like every model reference of the state)."""
        return self._shared.model(ref)

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
            state.capabilities = self._shared.capabilities(status.capabilities)
        if status.models:
            state.model = self._shared.model(status.models[0])
        return True

    def apply_result(self, batch: ResultBatch, anomalous: int, now: float) -> None:
        """Count a batch of scored readings, ``anomalous`` of them flagged."""
        state = self.touch(batch.node, batch.boot, now)
        state.readings += batch.n
        state.anomalous += anomalous
        model = state.model
        if model is None or model.name != batch.model.name or model.version != batch.model.version:
            state.model = self._shared.model(batch.model)
        if state.threshold != batch.threshold:
            state.threshold = self._shared.number(batch.threshold)
        self.model_counts.add(batch.model.name, batch.model.version, batch.n, anomalous)
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
        before = state.telemetry
        if before is not None and telemetry.ts < before.ts:
            return  # older than the report on record (a late delivery): nothing new in it
        summary = summarize_telemetry(telemetry)
        if before is not None and before.boot == summary.boot:
            # The node's counters restart at its boot: what they grew by is what happened.
            state.dropped_seen += max(0, summary.dropped - before.dropped)
            state.errors_seen += max(0, summary.errors - before.errors)
        else:
            state.dropped_seen += summary.dropped
            state.errors_seen += summary.errors
        state.telemetry = summary
        if telemetry.model is not None:
            state.model = self._shared.model(telemetry.model)

    def apply_drift(self, drift: Drift, now: float) -> None:
        """Keep the newest drift report (by ``ts``)."""
        state = self.touch(drift.node, drift.boot, now)
        if state.drift is None or drift.ts >= state.drift.ts:
            summary = summarize_drift(drift, self._shared.model(drift.model))
            state.drift = msgspec.structs.replace(
                summary, state=self._shared.drift_state(summary.state)
            )

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
