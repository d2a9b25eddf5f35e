"""Bounded fleet series: groups, model versions, per-node health lines and the detail bound."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from cloud_hub.ingest.dedupe import Deduper
from cloud_hub.ingest.fleet import FleetState
from cloud_hub.ingest.fleet_series import OTHER, UNGROUPED, GroupLabels
from cloud_hub.ingest.inbound import Ingest
from cloud_hub.ingest.metrics import HubCollector, new_registry
from cloud_hub.ingest.snapshot import StoredNode, dump_node, load_node
from schemas.codec import MESSAGE_TYPES, encode
from schemas.messages import Capabilities, ModelRef, Percentiles, ScoreStats
from schemas.samples import SAMPLES
from schemas.topics import Kind, node_topic

NOW = 1_800_000_000.0
KIND_OF = {typ: kind for kind, typ in MESSAGE_TYPES.items()}
CAPS: Capabilities = SAMPLES["status"].capabilities  # type: ignore[attr-defined]


def msg(kind: str, node: str, **changes: Any) -> Any:
    return msgspec.structs.replace(SAMPLES[kind], node=node, **changes)


def send(ingest: Ingest, message: Any, now: float = NOW) -> None:
    topic = node_topic(message.node, Kind(KIND_OF[type(message)]))
    ingest.handle(topic, encode(message), now)


def birth(ingest: Ingest, node: str, group: str, boot: str = "b1") -> None:
    caps = msgspec.structs.replace(CAPS, group=group)
    send(ingest, msg("status", node, boot=boot, capabilities=caps))


Found = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(collector: HubCollector) -> Found:
    """Every sample of one scrape as /metrics serves it (the fast text path), parsed."""
    text = collector.render().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def get(found: Found, name: str, **labels: str) -> float:
    return found[name, frozenset(labels.items())]


def test_groups_past_the_bound_are_other_and_no_group_is_ungrouped() -> None:
    labels = GroupLabels(max_groups=2)
    assert [labels(g) for g in ("a", "", "b", "a")] == ["a", UNGROUPED, OTHER, "a"]
    assert labels("x" * 100) == OTHER


def test_group_series_sum_the_nodes_of_each_group_and_bound_the_groups() -> None:
    ingest = Ingest(FleetState(offline_after_s=60.0), Deduper())
    collector = HubCollector(ingest, clock=lambda: NOW, max_groups=2)
    for node, group in (("p1", "north"), ("p2", "north"), ("p3", "south"), ("p4", "east")):
        birth(ingest, node, group)
        send(ingest, msg("result", node, boot="b1", seq=1, first=0))
        send(ingest, msg("event", node, boot="b1", seq=2, state="open"))
    found = samples(collector)
    assert get(found, "edgeml_group_readings_total", group="north") == 2 * 3
    assert get(found, "edgeml_group_readings_total", group="south") == 3
    assert get(found, "edgeml_group_readings_total", group=OTHER) == 3  # east: third group
    assert get(found, "edgeml_group_events_total", group="north", state="open") == 2
    assert get(found, "edgeml_group_nodes", group="north", state="online") == 2
    assert get(found, "edgeml_node_up", node="p4", group=OTHER) == 1
    groups = {dict(labels).get("group") for (_, labels) in found}
    assert groups - {None} == {"north", "south", OTHER}


def test_outbox_drops_count_growth_across_a_reboot_so_the_group_sum_never_falls() -> None:
    ingest = Ingest(FleetState(offline_after_s=60.0), Deduper())
    collector = HubCollector(ingest, clock=lambda: NOW)
    birth(ingest, "p1", "line-1")
    send(ingest, msg("telemetry", "p1", boot="b1", seq=1, ts=NOW - 20, dropped=5))
    send(ingest, msg("telemetry", "p1", boot="b1", seq=2, ts=NOW - 10, dropped=7))
    birth(ingest, "p1", "line-1", boot="b2")  # the node restarts: its counter starts again
    send(ingest, msg("telemetry", "p1", boot="b2", seq=1, ts=NOW, dropped=1))
    found = samples(collector)
    assert get(found, "edgeml_group_outbox_dropped_total", group="line-1") == 7 + 1
    assert get(found, "edgeml_fleet_outbox_dropped") == 1  # as the node last reported


def test_histograms_of_latency_and_score_count_nodes_by_bucket() -> None:
    ingest = Ingest(FleetState(offline_after_s=60.0), Deduper())
    collector = HubCollector(ingest, clock=lambda: NOW)
    for i, (p99_ms, score_p99) in enumerate(((0.3, 1.0), (3.0, 9.0), (300.0, 4.0))):
        node = f"p{i}"
        birth(ingest, node, "g")
        # threshold 4.5 (sample batch): score p99 1.0, 9.0, 4.0 -> 0.22, 2, 0.89 thresholds
        send(ingest, msg("result", node, boot="b1", seq=1, first=0))
        latency = Percentiles(p50=0.1, p95=0.2, p99=p99_ms, max=500.0)
        send(ingest, msg("telemetry", node, boot="b1", seq=2, latency_ms=latency))
        score = ScoreStats(mean=1.0, p50=1.0, p95=1.0, p99=score_p99, flagged_fraction=0, psi=0)
        send(ingest, msg("drift", node, boot="b1", seq=3, score=score))
    found = samples(collector)
    latency_le = {"0.001": 1, "0.005": 2, "0.25": 2, "1.0": 3, "+Inf": 3}
    for le, count in latency_le.items():
        assert get(found, "edgeml_group_latency_p99_seconds_bucket", group="g", le=le) == count
    score_le = {"0.25": 1, "1.0": 2, "2.0": 3, "+Inf": 3}
    for le, count in score_le.items():
        labels = {"model": "pump-pca", "version": "3", "le": le}
        assert get(found, "edgeml_model_score_p99_ratio_bucket", **labels) == count


def test_model_counters_count_readings_per_version_as_they_arrive() -> None:
    ingest = Ingest(FleetState(offline_after_s=60.0), Deduper())
    collector = HubCollector(ingest, clock=lambda: NOW)
    birth(ingest, "p1", "g")
    send(ingest, msg("result", "p1", boot="b1", seq=1, first=0, model=ModelRef("m", "1")))
    send(ingest, msg("result", "p1", boot="b1", seq=2, first=3, model=ModelRef("m", "2")))
    found = samples(collector)
    assert get(found, "edgeml_model_readings_total", model="m", version="1") == 3
    assert get(found, "edgeml_model_anomalous_readings_total", model="m", version="2") == 1
    # The node's readings stay with the version that scored them after it moved on.
    assert get(found, "edgeml_node_info", node="p1", group="g", model="m", version="2") == 1


def test_detail_is_bounded_by_the_limit_and_health_covers_every_node() -> None:
    ingest = Ingest(FleetState(offline_after_s=60.0), Deduper())
    collector = HubCollector(ingest, clock=lambda: NOW, per_node_limit=2)
    for node in ("p3", "p1", "p2"):
        birth(ingest, node, "g")
    found = samples(collector)
    detailed = {dict(labels)["node"] for (name, labels) in found if name == "edgeml_seq_gaps"}
    assert detailed == {"p1", "p2"}
    assert {dict(labels)["node"] for (name, labels) in found if name == "edgeml_node_up"} == {
        "p1",
        "p2",
        "p3",
    }
    assert get(found, "edgeml_metrics_nodes_without_detail") == 1


def test_the_served_text_holds_what_the_registry_holds() -> None:
    ingest = Ingest(FleetState(offline_after_s=60.0), Deduper())
    collector = HubCollector(ingest, clock=lambda: NOW)
    birth(ingest, "p1", 'odd "group"\\')
    send(ingest, msg("result", "p1", boot="b1", seq=1, first=0))
    send(ingest, msg("telemetry", "p1", boot="b1", seq=2))
    served = samples(collector)
    registry = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in new_registry(collector).collect()
        for s in family.samples
    }
    assert served == pytest.approx(registry)
    assert get(served, "edgeml_node_up", node="p1", group='odd "group"\\') == 1


def test_a_store_written_with_whole_telemetry_loads_as_its_summary() -> None:
    ingest = Ingest(FleetState(offline_after_s=60.0), Deduper())
    send(ingest, msg("status", "p1", boot="b1"))
    send(ingest, msg("telemetry", "p1", boot="b1", seq=1, dropped=4))
    state = ingest.fleet.node("p1")
    assert state is not None and state.telemetry is not None
    # What an older hub wrote: the whole Telemetry message under "telemetry".
    old = msgspec.msgpack.encode(
        StoredNode(node="p1", boot="b1", telemetry=msg("telemetry", "p1", boot="b1", dropped=4))
    )
    loaded = load_node(old)
    assert loaded.telemetry is not None
    assert (loaded.telemetry.dropped, loaded.telemetry.errors) == (4, 1)
    again = load_node(dump_node(state))
    assert again.telemetry == state.telemetry and again.dropped_seen == 4
