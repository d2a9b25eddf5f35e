"""Prometheus metrics computed at scrape time from fleet state; the only prometheus_client user.

Labels are bounded: ``node`` and ``model``/``version`` at most on per-node series, ``group``
(at most ``max_groups`` names, the rest ``other``) and ``model``/``version`` on aggregated ones,
plus small enums (``kind``, ``reason``, ``type``, ``state``, ``status``, ``percentile``, ``le``).
Never a channel or a boot.

What a scrape holds (cloud_hub.ingest.fleet_series): fleet-wide, per-group and per-model-version
families whatever the fleet's size; three health gauges per node (up, last seen, active model),
rendered as text directly; and the full per-node detail (~20 series a node) for at most
``per_node_limit`` nodes (in node id order; ``per_node = false``: none). At 10,000 nodes that
is ~31,000 lines in well under 0.25 s (bench/metrics_scrape.py); with every node in detail it
was ~270,000 lines and ~3 s.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Final

from prometheus_client import generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector, CollectorRegistry

from cloud_hub.commands.lifecycle import ACK_STATUSES, ACK_TYPES, LifecycleCounts
from cloud_hub.ingest.change_series import retrain_families, rollout_families, shadow_families
from cloud_hub.ingest.drift_state import LEVELS as DRIFT_LEVELS
from cloud_hub.ingest.fleet import NodeState
from cloud_hub.ingest.fleet_series import (
    DEFAULT_MAX_GROUPS,
    Family,
    GroupLabels,
    aggregate,
    health_families,
    health_text,
    model_families,
    totals_families,
)
from cloud_hub.ingest.fleet_totals import NodeSnapshot
from cloud_hub.ingest.inbound import MESSAGE_KINDS, Ingest
from cloud_hub.retraining.loop import LoopCounts
from cloud_hub.rollouts.runner import RolloutCounts

_NODE = ["node"]
DEFAULT_PER_NODE_LIMIT: Final = 100


@dataclass(frozen=True, slots=True)
class DeliveryCounts:
    """The hub's side of end-to-end delivery: commits of its state and receipts to nodes."""

    commits: int
    commit_failures: int
    receipts_sent: int
    receipts_pending: int


def _delivery_families(counts: DeliveryCounts) -> list[Metric]:
    commits = CounterMetricFamily(
        "edgeml_state_commits", "Commits of the hub's ingest state (each acks a batch)."
    )
    commits.add_metric([], counts.commits)
    failures = CounterMetricFamily(
        "edgeml_state_commit_failures",
        "Commits of the hub's ingest state that failed (nothing acked; retried).",
    )
    failures.add_metric([], counts.commit_failures)
    sent = CounterMetricFamily(
        "edgeml_receipts_sent", "Receipts published to nodes (one per node and boot at most "
        "every receipt_interval_s)."
    )  # fmt: skip
    sent.add_metric([], counts.receipts_sent)
    pending = GaugeMetricFamily(
        "edgeml_receipts_pending", "Streams (node, boot) whose receipt waits for its interval."
    )
    pending.add_metric([], counts.receipts_pending)
    return [commits, failures, sent, pending]


class HubCollector(Collector):
    """Yields the hub's metric families from ``ingest`` and its fleet state on every scrape.

    :meth:`render` is what /metrics serves; :meth:`collect` yields the same samples through
    prometheus_client (a registry, for tests and tools)."""

    def __init__(
        self,
        ingest: Ingest,
        *,
        clock: Callable[[], float],
        lock: threading.Lock | None = None,
        per_node: bool = True,
        per_node_limit: int = DEFAULT_PER_NODE_LIMIT,
        max_groups: int = DEFAULT_MAX_GROUPS,
        lifecycle: Callable[[], LifecycleCounts] | None = None,
        backlog: Callable[[], int] | None = None,
        delivery: Callable[[], DeliveryCounts] | None = None,
        rollouts: Callable[[], RolloutCounts] | None = None,
        retrain: Callable[[], LoopCounts] | None = None,
    ) -> None:
        self._lifecycle = lifecycle
        self._rollouts = rollouts
        self._retrain = retrain
        self._backlog = backlog
        self._delivery = delivery
        self._fleet = ingest.fleet
        self._ingest = ingest
        self._clock = clock
        # The hub's loop mutates the state while the HTTP thread scrapes it.
        self._lock = lock or threading.Lock()
        self._detail_limit = per_node_limit if per_node else 0
        self._groups = GroupLabels(max_groups)

    def collect(self) -> Iterator[Metric]:
        """Compute every family now."""
        families, snapshots = self._gather()
        return iter([*families, *map(_metric, health_families(snapshots))])

    def render(self) -> bytes:
        """One scrape in the text exposition format (what /metrics serves)."""
        families, snapshots = self._gather()
        return generate_latest(_Families(families)) + health_text(snapshots).encode()

    def _gather(self) -> tuple[list[Metric], list[NodeSnapshot]]:
        """Every family but the per-node health ones, and the nodes' snapshots."""
        # Hold the lock (and so stall the hub's loop) only to copy numbers out of the state;
        # building the families happens after it is released.
        with self._lock:
            now = self._clock()
            families = self._fleet_wide(now)
            if self._lifecycle is not None:
                families += _lifecycle_families(self._lifecycle())
            if self._backlog is not None:
                backlog = GaugeMetricFamily(
                    "edgeml_ingest_backlog",
                    "Messages the broker delivered that the hub has not applied yet (its lag).",
                )
                backlog.add_metric([], self._backlog())
                families.append(backlog)
            if self._delivery is not None:
                families += _delivery_families(self._delivery())
            changes = shadow_families(self._fleet.shadows)
            if self._rollouts is not None:
                changes += rollout_families(self._rollouts())
            if self._retrain is not None:
                changes += retrain_families(self._retrain())
            families += map(_metric, changes)
            snapshots = [self._snapshot(s, now) for s in self._fleet.nodes()]
            open_counts = self._ingest.episodes.open.open_now()
            by_model = model_families(self._fleet.model_counts)
        totals, by_group = aggregate(snapshots, open_counts.items())
        families += [_metric(f) for f in (*totals_families(totals), *by_group, *by_model)]
        families += self._detail(snapshots, open_counts)
        return families, snapshots

    def _detail(
        self, snapshots: list[NodeSnapshot], open_counts: dict[tuple[str, str], int]
    ) -> list[Metric]:
        """The full per-node families of the first ``per_node_limit`` nodes by id."""
        chosen = snapshots
        if len(snapshots) > self._detail_limit:
            chosen = sorted(snapshots, key=lambda s: s.node)[: self._detail_limit]
        without = GaugeMetricFamily(
            "edgeml_metrics_nodes_without_detail",
            "Nodes exported with their health gauges only (beyond metrics.per_node_limit, or "
            "metrics.per_node = false); cloud-hub nodes lists them all.",
        )
        without.add_metric([], len(snapshots) - len(chosen))
        if not chosen:
            return [without]
        per_node = _NodeFamilies()
        for snapshot in chosen:
            per_node.add(snapshot)
        # Every detailed node has both kinds, zeros included (rules compare them over time).
        opened = [
            ((s.node, kind), open_counts.get((s.node, kind), 0))
            for s in chosen
            for kind in ("machine", "sensor")
        ]
        return [*per_node.all(), _open_episodes(opened), without]

    def _snapshot(self, s: NodeState, now: float) -> NodeSnapshot:
        # Positional: this runs for every node of every scrape, under the hub's lock.
        return NodeSnapshot(
            s.node, self._fleet.is_online(s, now), s.readings, s.anomalous, s.events_opened,
            s.events_closed, s.model, s.telemetry, s.drift, self._ingest.deduper.gaps(s.node),
            s.missing_readings(), s.errors_total, self._groups(s.group), s.last_seen,
            s.dropped_seen, s.errors_seen, s.threshold,
        )  # fmt: skip

    def _fleet_wide(self, now: float) -> list[Metric]:
        messages = CounterMetricFamily(
            "edgeml_messages", "Messages received and applied, by topic kind.", labels=["kind"]
        )
        for kind in MESSAGE_KINDS:
            messages.add_metric([kind], self._ingest.messages[kind])
        duplicates = CounterMetricFamily(
            "edgeml_duplicates", "Redelivered messages dropped by (node, boot, seq)."
        )
        duplicates.add_metric([], self._ingest.duplicates)
        rejected = CounterMetricFamily(
            "edgeml_rejected_messages",
            "Messages rejected, by reason and message type (topic kind or unknown).",
            labels=["reason", "type"],
        )
        for (reason, kind), count in sorted(self._ingest.rejects.items()):
            rejected.add_metric([reason, kind], count)
        nodes = GaugeMetricFamily("edgeml_nodes", "Known nodes by state.", labels=["state"])
        online, offline = self._fleet.counts(now)
        nodes.add_metric(["online"], online)
        nodes.add_metric(["offline"], offline)
        applied = GaugeMetricFamily(
            "edgeml_ingest_last_applied_timestamp_seconds",
            "The node timestamp of the message the hub applied last: time() minus it is the "
            "hub's lag behind the nodes (absent before the first message).",
        )
        if self._ingest.last_applied_ts is not None:
            applied.add_metric([], self._ingest.last_applied_ts)
        return [messages, duplicates, rejected, nodes, applied]


def _open_episodes(counts: list[tuple[tuple[str, str], int]]) -> Metric:
    family = GaugeMetricFamily(
        "edgeml_open_episodes",
        "Episodes open now, by node and kind (machine anomaly or sensor fault).",
        labels=["node", "kind"],
    )
    for (node, kind), count in counts:
        family.add_metric([node, kind], count)
    return family


def _lifecycle_families(counts: LifecycleCounts) -> list[Metric]:
    acks = CounterMetricFamily(
        "edgeml_command_acks",
        "Command acks received from nodes, by command type and status.",
        labels=["type", "status"],
    )
    for typ in ACK_TYPES:
        for status in ACK_STATUSES:
            acks.add_metric([typ, status], counts.acks.get((typ, status), 0))
    published = CounterMetricFamily(
        "edgeml_chunks_published", "Model chunks handed to the broker for deploying nodes."
    )
    published.add_metric([], counts.chunks_published)
    pending = GaugeMetricFamily(
        "edgeml_chunks_pending", "Model chunks asked for and not yet handed to the broker."
    )
    pending.add_metric([], counts.chunks_pending)
    refused = CounterMetricFamily(
        "edgeml_chunk_requests_refused",
        "Chunk requests not served, by reason (unknown_model, bad_request, ...).",
        labels=["reason"],
    )
    for reason, count in sorted(counts.chunk_refusals.items()):
        refused.add_metric([reason], count)
    captures = CounterMetricFamily(
        "edgeml_captures_completed", "Captures of readings for retraining received in full."
    )
    captures.add_metric([], counts.captures_completed)
    bad_captures = CounterMetricFamily(
        "edgeml_capture_chunks_refused",
        "Capture chunks not stored, by reason (bad_command_id, inconsistent, io_error).",
        labels=["reason"],
    )
    for reason, count in sorted(counts.capture_refusals.items()):
        bad_captures.add_metric([reason], count)
    return [acks, published, pending, refused, captures, bad_captures]


class _NodeFamilies:
    """The per-node families, filled one node at a time."""

    def __init__(self) -> None:
        self.readings = _counter(
            "edgeml_readings", "Readings the node scored, received since the hub started."
        )
        self.anomalous = _counter(
            "edgeml_anomalous_readings",
            "Readings the node flagged anomalous, received since the hub started.",
        )
        self.events = CounterMetricFamily(
            "edgeml_events",
            "Anomaly episodes opened and closed, received since the hub started.",
            labels=["node", "state"],
        )
        self.latency = GaugeMetricFamily(
            "edgeml_inference_latency_seconds",
            "Inference latency percentiles (50, 95, 99) over the last telemetry interval, in "
            "seconds (a gauge of the node's figures, not a summary: hence percentile, not "
            "quantile).",
            labels=["node", "percentile"],
        )
        self.psi = _gauge(
            "edgeml_drift_psi_max", "Largest per-channel PSI in the last drift report."
        )
        self.shift = _gauge(
            "edgeml_drift_mean_shift_max_sd",
            "Largest per-channel |mean shift| in reference standard deviations.",
        )
        self.drift_state = GaugeMetricFamily(
            "edgeml_drift_state",
            "1 for the node's drift state (ok, watch, drifting) from its last drift report.",
            labels=["node", "state"],
        )
        self.score_p99 = _gauge("edgeml_score_p99", "99th percentile of the anomaly score.")
        self.depth = _gauge("edgeml_outbox_depth", "Messages waiting in the node's outbox.")
        self.outbox_bytes = _gauge("edgeml_outbox_bytes", "Bytes waiting in the node's outbox.")
        self.dropped = _counter(
            "edgeml_outbox_dropped", "Messages the node's outbox dropped since boot."
        )
        self.rollbacks = _counter(
            "edgeml_model_rollbacks",
            "Models the node rolled back since boot (from its telemetry).",
        )
        self.rss = _gauge("edgeml_node_rss_bytes", "Resident memory of the edge-node process.")
        self.cpu = _gauge("edgeml_node_cpu_percent", "CPU use of the edge-node process, percent.")
        self.power = _gauge("edgeml_node_power_watts", "Estimated or measured power draw, watts.")
        self.errors = _counter("edgeml_node_errors", "Errors the node reported since boot.")
        self.gaps = _gauge("edgeml_seq_gaps", "Message seqs never received (gaps in the stream).")
        self.missing = _gauge("edgeml_missing_readings", "Readings never received in results.")

    def add(self, s: NodeSnapshot) -> None:
        """Add the samples of one node."""
        n = [s.node]
        self.readings.add_metric(n, s.readings)
        self.anomalous.add_metric(n, s.anomalous)
        self.events.add_metric([s.node, "open"], s.events_opened)
        self.events.add_metric([s.node, "close"], s.events_closed)
        self.gaps.add_metric(n, s.gaps)
        self.missing.add_metric(n, s.missing)
        if (t := s.telemetry) is not None:
            for percentile, value in (
                ("50", t.latency_p50_ms),
                ("95", t.latency_p95_ms),
                ("99", t.latency_p99_ms),
            ):
                self.latency.add_metric([s.node, percentile], value / 1000.0)
            self.depth.add_metric(n, t.outbox_depth)
            self.outbox_bytes.add_metric(n, t.outbox_bytes)
            self.dropped.add_metric(n, t.dropped)
            self.rollbacks.add_metric(n, t.rollbacks)
            self.rss.add_metric(n, t.rss_bytes)
            self.cpu.add_metric(n, t.cpu_percent)
            self.power.add_metric(n, t.power_w)
            self.errors.add_metric(n, s.errors)
        if (d := s.drift) is not None:
            self.psi.add_metric(n, d.psi_max)
            self.shift.add_metric(n, d.mean_shift_max_sd)
            self.score_p99.add_metric(n, d.score_p99)
            if d.state is not None:
                for level in DRIFT_LEVELS:
                    self.drift_state.add_metric([s.node, level], float(d.state.level == level))

    def all(self) -> list[Metric]:
        """Every family, in a fixed order."""
        return [v for v in vars(self).values() if isinstance(v, Metric)]


def _counter(name: str, documentation: str) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, labels=_NODE)


def _gauge(name: str, documentation: str) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, labels=_NODE)


def _metric(family: Family) -> Metric:
    """A family of cloud_hub.ingest.fleet_series as prometheus_client's."""
    metric = Metric(family.name, family.help, family.type)
    for name, labels, value in family.samples:
        metric.add_sample(name, labels, value)
    return metric


class _Families:
    """What ``generate_latest`` needs of a registry: ``collect``."""

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def new_registry(collector: HubCollector) -> CollectorRegistry:
    """A fresh registry holding only ``collector`` (no process or GC collectors)."""
    registry = CollectorRegistry()
    registry.register(collector)
    return registry
