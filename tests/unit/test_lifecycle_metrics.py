"""The model-lifecycle side of ``serve``: acks counted, recorded and served, and their metrics."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest

from cloud_hub.commands.identity import HubIdentity
from cloud_hub.commands.ledger import CommandRecord, Ledger, LedgerError
from cloud_hub.commands.lifecycle import ACK_STATUSES, ACK_TYPES, AckTracker, lifecycle_counts
from cloud_hub.ingest.dedupe import Deduper
from cloud_hub.ingest.fleet import FleetState
from cloud_hub.ingest.inbound import Ingest
from cloud_hub.ingest.metrics import HubCollector, new_registry
from cloud_hub.models.capture_store import CaptureStore
from cloud_hub.models.catalog import UnknownModel
from cloud_hub.models.chunks import ChunkServer, PublishOutcome
from schemas.codec import encode
from schemas.messages import Ack, ModelRef
from schemas.samples import SAMPLES
from schemas.topics import Kind, node_topic

NOW = 1_800_000_000.0
MODEL = ModelRef("pump-pca", "2")
# "status" is new: the fixed set of ack statuses.
ALLOWED_LABELS = {
    "node",
    "model",
    "version",
    "kind",
    "reason",
    "type",
    "state",
    "percentile",
    "status",
    "group",  # bounded by metrics.max_groups
    "le",
}


class Artifacts:
    def artifact(self, name: str, version: str) -> bytes:
        if ModelRef(name, version) != MODEL:
            raise UnknownModel(f"{name}@{version}")
        return b"m" * 100


class Publisher:
    def __init__(self) -> None:
        self.topics: list[str] = []

    def offer(self, topic: str, payload: bytes) -> PublishOutcome:
        self.topics.append(topic)
        return "queued"


class Hub:
    """Ingest wired to the lifecycle parts as ``serve`` wires them, minus MQTT and HTTP."""

    def __init__(self, tmp_path: Path) -> None:
        self.ledger = Ledger(tmp_path / "ledger.db")
        self.publisher = Publisher()
        self.chunks = ChunkServer(
            Artifacts(), lambda _: 10, self.publisher, HubIdentity("hub", "b")
        )
        self.captures = CaptureStore(tmp_path / "captures")
        self.acks = AckTracker(self.ledger, [self.chunks])
        self.ingest = Ingest(
            FleetState(offline_after_s=60.0), Deduper(), acks=self.acks, captures=self.captures
        )
        self.registry = new_registry(
            HubCollector(
                self.ingest,
                clock=lambda: NOW,
                lifecycle=lambda: lifecycle_counts(self.acks, self.chunks, self.captures),
            )
        )

    def send(self, kind: str, message: Any) -> None:
        self.ingest.handle(node_topic(message.node, Kind(kind)), encode(message), NOW)

    def ack(self, seq: int, status: str, command_type: str = "deploy", **changes: Any) -> None:
        fields = {"seq": seq, "status": status, "command_type": command_type, **changes}
        self.send("ack", msgspec.structs.replace(SAMPLES["ack"], **fields))

    def value(self, name: str, **labels: str) -> float | None:
        return self.registry.get_sample_value(name, labels)


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    hub = Hub(tmp_path)
    yield hub
    hub.ledger.close()


def test_acks_are_counted_by_bounded_type_and_status(hub: Hub) -> None:
    hub.ack(1, "accepted")
    hub.ack(2, "applied")
    hub.ack(2, "applied")  # a redelivery: dropped by dedupe, not counted
    hub.ack(3, "rejected", command_type="ping")
    hub.ack(4, "failed", command_type="config-v7")
    assert hub.value("edgeml_command_acks_total", type="deploy", status="accepted") == 1
    assert hub.value("edgeml_command_acks_total", type="deploy", status="applied") == 1
    assert hub.value("edgeml_command_acks_total", type="ping", status="rejected") == 1
    assert hub.value("edgeml_command_acks_total", type="unknown", status="failed") == 1
    # Every combination is exposed from the start, so rate() works from the first ack.
    for typ in ACK_TYPES:
        for status in ACK_STATUSES:
            assert hub.value("edgeml_command_acks_total", type=typ, status=status) is not None


def test_every_new_ack_is_in_the_ledger(hub: Hub) -> None:
    hub.ledger.record_command(
        CommandRecord("c9", "deploy", "pump-01", NOW, NOW + 60, None, {}, "test")
    )
    hub.ack(1, "accepted", command="c9", detail={"need": "0"})
    hub.ack(2, "applied", command="c9")
    hub.ack(2, "applied", command="c9")
    [history] = hub.ledger.commands()
    assert [(a.seq, a.status) for a in history.acks] == [(1, "accepted"), (2, "applied")]


def test_accepted_deploy_acks_get_their_chunks_published(hub: Hub) -> None:
    hub.ack(1, "accepted", model=MODEL, detail={"need": "0-9"})
    assert hub.value("edgeml_chunks_pending") == 10
    hub.chunks.pump(NOW, budget=4)
    assert hub.value("edgeml_chunks_published_total") == 4
    assert hub.value("edgeml_chunks_pending") == 6
    assert hub.publisher.topics[0] == "edgeml/v1/models/pump-pca/2/0"


def test_chunk_requests_for_unknown_models_are_counted(hub: Hub) -> None:
    hub.ack(1, "accepted", model=ModelRef("ghost", "1"), detail={"need": "0"})
    value = hub.value("edgeml_chunk_requests_refused_total", reason="unknown_model")
    assert value == 1
    assert hub.publisher.topics == []


def test_completed_captures_are_counted(hub: Hub) -> None:
    hub.send("capture", SAMPLES["capture"])  # one chunk of one: complete
    assert hub.value("edgeml_captures_completed_total") == 1
    bad = msgspec.structs.replace(SAMPLES["capture"], seq=99, command="a/b")
    hub.send("capture", bad)
    assert hub.value("edgeml_capture_chunks_refused_total", reason="bad_command_id") == 1


def test_rollbacks_come_from_each_nodes_telemetry(hub: Hub) -> None:
    hub.send("status", SAMPLES["status"])
    hub.send("telemetry", msgspec.structs.replace(SAMPLES["telemetry"], rollbacks=3))
    assert hub.value("edgeml_model_rollbacks_total", node="pump-01") == 3


def test_new_families_keep_label_sets_bounded(hub: Hub) -> None:
    hub.ack(1, "accepted", model=MODEL, detail={"need": "0"})
    hub.send("telemetry", SAMPLES["telemetry"])
    for family in hub.registry.collect():
        for sample in family.samples:
            assert set(sample.labels) <= ALLOWED_LABELS, sample


def test_a_failing_ledger_does_not_stop_the_ack(tmp_path: Path) -> None:
    class BrokenLedger:
        def record_ack(self, ack: Ack, received_at: float) -> bool:
            raise LedgerError("ledger.db: disk I/O error")

    seen: list[str] = []

    class Consumer:
        def on_ack(self, ack: Ack, now: float) -> int:
            seen.append(ack.command)
            return 0

    tracker = AckTracker(BrokenLedger(), [Consumer()])
    tracker.on_ack(cast(Ack, SAMPLES["ack"]), NOW)
    assert seen == ["c-0001"]
    assert tracker.acks["deploy", "applied"] == 1
