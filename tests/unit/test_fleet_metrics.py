"""Prometheus families computed from fleet state, read through a fresh CollectorRegistry."""

from __future__ import annotations

from typing import Any

import msgspec
import numpy as np
import pytest
from prometheus_client.registry import CollectorRegistry

from cloud_hub.ingest.dedupe import Deduper
from cloud_hub.ingest.fleet import FleetState
from cloud_hub.ingest.inbound import Ingest
from cloud_hub.ingest.metrics import HubCollector, new_registry
from schemas.codec import MESSAGE_TYPES, encode
from schemas.messages import ChannelDrift, ModelRef, Percentiles, ScoreStats
from schemas.packing import pack_f32, pack_flags
from schemas.samples import SAMPLES
from schemas.topics import Kind, node_topic

NOW = 1_800_000_000.0
KIND_OF = {typ: kind for kind, typ in MESSAGE_TYPES.items()}
SAMPLE_N = 3  # readings in the sample result batch
ALLOWED_LABELS = {
    *("node", "model", "version", "kind", "reason", "type", "state", "percentile"),
    *("group", "le"),  # the bounded group label and histogram buckets
}
# A node that announced no group.
UNGROUPED = {"group": "ungrouped"}


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def msg(kind: str, node: str, **changes: Any) -> Any:
    return msgspec.structs.replace(SAMPLES[kind], node=node, **changes)


def send(ingest: Ingest, message: Any, now: float = NOW) -> None:
    topic = node_topic(message.node, Kind(KIND_OF[type(message)]))
    ingest.handle(topic, encode(message), now)


def hub(per_node: bool = True) -> tuple[Ingest, CollectorRegistry, Clock]:
    ingest = Ingest(FleetState(offline_after_s=60.0), Deduper())
    clock = Clock(NOW)
    return ingest, new_registry(HubCollector(ingest, clock=clock, per_node=per_node)), clock


def drift_channels(psis: list[float], shifts: list[float]) -> list[ChannelDrift]:
    return [
        ChannelDrift(channel=f"ch{i}", psi=p, mean_shift_sd=s, mean=0.0, std=1.0)
        for i, (p, s) in enumerate(zip(psis, shifts, strict=True))
    ]


@pytest.fixture
def fed() -> tuple[Ingest, CollectorRegistry, Clock]:
    """One node that sent one of everything, plus garbage and a duplicate."""
    ingest, registry, clock = hub()
    send(ingest, msg("status", "pump-01"))
    flags = np.array([True, False, False, True, True])
    batch = msg(
        "result",
        "pump-01",
        seq=30,
        first=0,
        n=5,
        scores=pack_f32(np.ones(5)),
        flags=pack_flags(flags),
        model=ModelRef("pump-pca", "4"),
    )
    send(ingest, batch)
    send(ingest, batch)
    send(ingest, msg("result", "pump-01", seq=33, first=10, n=3))
    send(ingest, msg("event", "pump-01", seq=34, state="open"))
    send(ingest, msg("event", "pump-01", seq=35, state="close"))
    latency = Percentiles(p50=0.1, p95=0.2, p99=0.3, max=1.0)
    send(
        ingest,
        msg(
            "telemetry",
            "pump-01",
            seq=36,
            latency_ms=latency,
            outbox_depth=12,
            outbox_bytes=3400,
            dropped=2,
            rss_bytes=50_000_000,
            cpu_percent=7.5,
            power_w=4.25,
            errors={"decode": 1, "model": 2},
            model=ModelRef("pump-pca", "4"),
        ),
    )
    channels = drift_channels([0.05, 0.3, 0.1], [0.2, -2.5, 1.0])
    score = ScoreStats(mean=1.0, p50=0.9, p95=3.0, p99=6.25, flagged_fraction=0.1, psi=0.2)
    send(ingest, msg("drift", "pump-01", seq=37, channels=channels, score=score))
    ingest.handle("edgeml/v1/pump-01/result", b"\xc1", NOW)
    ingest.handle("edgeml/v1/pump-01/cmd", b"", NOW)
    return ingest, registry, clock


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


def test_per_node_families(fed: tuple[Ingest, CollectorRegistry, Clock]) -> None:
    _, r, _ = fed
    node = {"node": "pump-01"}
    assert value(r, "edgeml_readings_total", **node) == 8
    assert value(r, "edgeml_anomalous_readings_total", **node) == 3 + 1
    assert value(r, "edgeml_events_total", state="open", **node) == 1
    assert value(r, "edgeml_events_total", state="close", **node) == 1
    for percentile, ms in (("50", 0.1), ("95", 0.2), ("99", 0.3)):
        seconds = value(r, "edgeml_inference_latency_seconds", percentile=percentile, **node)
        assert seconds == pytest.approx(ms / 1000)
    assert value(r, "edgeml_node_up", **node, **UNGROUPED) == 1
    assert value(r, "edgeml_node_info", model="pump-pca", version="4", **node, **UNGROUPED) == 1
    assert value(r, "edgeml_node_last_seen_timestamp_seconds", **node) == NOW
    assert value(r, "edgeml_drift_psi_max", **node) == 0.3
    assert value(r, "edgeml_drift_mean_shift_max_sd", **node) == 2.5
    assert value(r, "edgeml_score_p99", **node) == 6.25
    assert value(r, "edgeml_outbox_depth", **node) == 12
    assert value(r, "edgeml_outbox_bytes", **node) == 3400
    assert value(r, "edgeml_outbox_dropped_total", **node) == 2
    assert value(r, "edgeml_node_rss_bytes", **node) == 50_000_000
    assert value(r, "edgeml_node_cpu_percent", **node) == 7.5
    assert value(r, "edgeml_node_power_watts", **node) == 4.25
    assert value(r, "edgeml_node_errors_total", **node) == 3
    assert value(r, "edgeml_seq_gaps", **node) == 2  # seqs 31 and 32
    assert value(r, "edgeml_missing_readings", **node) == 5  # readings 5..9


def test_fleet_wide_families(fed: tuple[Ingest, CollectorRegistry, Clock]) -> None:
    _, r, _ = fed
    assert value(r, "edgeml_messages_total", kind="result") == 2
    assert value(r, "edgeml_messages_total", kind="status") == 1
    assert value(r, "edgeml_messages_total", kind="capture") == 0
    assert value(r, "edgeml_duplicates_total") == 1
    assert value(r, "edgeml_rejected_messages_total", reason="malformed", type="result") == 1
    assert value(r, "edgeml_rejected_messages_total", reason="unexpected_kind", type="cmd") == 1
    assert value(r, "edgeml_nodes", state="online") == 1
    assert value(r, "edgeml_nodes", state="offline") == 0


def test_node_up_follows_the_clock_at_scrape_time(
    fed: tuple[Ingest, CollectorRegistry, Clock],
) -> None:
    _, r, clock = fed
    clock.now = NOW + 61.0
    assert value(r, "edgeml_node_up", node="pump-01", **UNGROUPED) == 0
    assert value(r, "edgeml_nodes", state="offline") == 1


def test_a_will_takes_the_node_down(fed: tuple[Ingest, CollectorRegistry, Clock]) -> None:
    ingest, r, _ = fed
    send(ingest, msg("status", "pump-01", state="offline", ts=NOW + 1.0, capabilities=None))
    assert value(r, "edgeml_node_up", node="pump-01", **UNGROUPED) == 0


def test_per_node_false_leaves_only_the_health_gauges_per_node() -> None:
    ingest, r, _ = hub(per_node=False)
    send(ingest, msg("status", "pump-01"))
    send(ingest, msg("result", "pump-01", seq=40))
    names = {s.name for family in r.collect() for s in family.samples}
    per_node = {s.name for family in r.collect() for s in family.samples if "node" in s.labels}
    assert per_node == HEALTH_SAMPLES
    assert value(r, "edgeml_readings_total", node="pump-01") is None
    assert value(r, "edgeml_messages_total", kind="result") == 1
    assert value(r, "edgeml_nodes", state="online") == 1
    assert value(r, "edgeml_metrics_nodes_without_detail") == 1
    assert names >= {
        "edgeml_messages_total",
        "edgeml_duplicates_total",
        "edgeml_nodes",
        *FLEET_SAMPLES,
        *HEALTH_SAMPLES,
    }
    assert value(r, "edgeml_fleet_readings_total") == SAMPLE_N
    assert value(r, "edgeml_group_readings_total", **UNGROUPED) == SAMPLE_N


HEALTH_SAMPLES = {"edgeml_node_up", "edgeml_node_last_seen_timestamp_seconds", "edgeml_node_info"}


FLEET_SAMPLES = {
    "edgeml_fleet_readings_total",
    "edgeml_fleet_anomalous_readings_total",
    "edgeml_fleet_seq_gaps",
    "edgeml_fleet_missing_readings",
    "edgeml_fleet_node_errors",
    "edgeml_fleet_outbox_dropped",
    "edgeml_fleet_events_total",
    "edgeml_fleet_nodes_by_model",
    "edgeml_fleet_drift_state",
    "edgeml_fleet_open_episodes",
}


def test_fleet_totals_are_the_sums_over_nodes_with_or_without_per_node_series() -> None:
    per_node = {"node-a": ("pca", "1"), "node-b": ("pca", "1"), "node-c": ("pca", "2")}
    ingests = {flag: hub(per_node=flag) for flag in (True, False)}
    for ingest, _, _ in ingests.values():
        for i, (node, (name, version)) in enumerate(per_node.items()):
            model = ModelRef(name, version)
            send(ingest, msg("status", node))
            send(ingest, msg("result", node, seq=10, first=0, model=model))
            send(ingest, msg("result", node, seq=11 + i, first=10 * i, model=model))
            send(ingest, msg("event", node, seq=20 + i, state="open"))
            send(ingest, msg("telemetry", node, seq=30 + i, errors={"model": i}, model=model))
    full, lean = ingests[True][1], ingests[False][1]
    nodes = list(per_node)
    for fleet, node_family in (
        ("edgeml_fleet_readings_total", "edgeml_readings_total"),
        ("edgeml_fleet_anomalous_readings_total", "edgeml_anomalous_readings_total"),
        ("edgeml_fleet_seq_gaps", "edgeml_seq_gaps"),
        ("edgeml_fleet_missing_readings", "edgeml_missing_readings"),
        ("edgeml_fleet_node_errors", "edgeml_node_errors_total"),
        ("edgeml_fleet_outbox_dropped", "edgeml_outbox_dropped_total"),
    ):
        expected = sum(value(full, node_family, node=n) or 0.0 for n in nodes)
        assert value(full, fleet) == value(lean, fleet) == expected, fleet
    assert value(lean, "edgeml_fleet_readings_total") == 3 * 2 * SAMPLE_N
    assert (value(lean, "edgeml_fleet_seq_gaps") or 0) > 0
    assert (value(lean, "edgeml_fleet_missing_readings") or 0) > 0
    assert value(lean, "edgeml_fleet_node_errors") == 0 + 1 + 2
    assert value(lean, "edgeml_fleet_events_total", state="open") == 3
    assert value(lean, "edgeml_fleet_nodes_by_model", model="pca", version="1") == 2
    assert value(lean, "edgeml_fleet_nodes_by_model", model="pca", version="2") == 1
    open_per_node = sum(
        value(full, "edgeml_open_episodes", node=n, kind="machine") or 0.0 for n in nodes
    )
    assert value(lean, "edgeml_fleet_open_episodes", kind="machine") == open_per_node == 3
    assert value(lean, "edgeml_fleet_open_episodes", kind="sensor") == 0


def test_label_cardinality_is_bounded_by_nodes_not_channels() -> None:
    ingest, r, _ = hub()
    rng = np.random.default_rng(1)
    for i in range(50):
        node = f"pump-{i:02d}"
        send(ingest, msg("status", node))
        send(ingest, msg("telemetry", node))
        psis = rng.random(8).tolist()
        send(ingest, msg("drift", node, channels=drift_channels(psis, [0.0] * 8)))
    samples = [s for family in r.collect() for s in family.samples]
    assert {k for s in samples for k in s.labels} <= ALLOWED_LABELS
    psi = [s for s in samples if s.name == "edgeml_drift_psi_max"]
    assert len(psi) == 50
    series_per_node = len([s for s in samples if s.labels.get("node") == "pump-07"])
    assert series_per_node < 30


def test_every_family_has_help_text(fed: tuple[Ingest, CollectorRegistry, Clock]) -> None:
    _, r, _ = fed
    families = list(r.collect())
    assert len(families) >= 21
    assert all(f.documentation.strip() for f in families)


def test_ingest_backlog_is_read_at_scrape_time() -> None:
    ingest = Ingest(FleetState(offline_after_s=60.0), Deduper())
    waiting = [3]
    r = new_registry(HubCollector(ingest, clock=Clock(NOW), backlog=lambda: waiting[0]))
    assert value(r, "edgeml_ingest_backlog") == 3
    waiting[0] = 0
    assert value(r, "edgeml_ingest_backlog") == 0
