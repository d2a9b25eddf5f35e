"""The whole node loop answering commands over a fake MQTT transport (no broker, no sleeps)."""

from __future__ import annotations

import queue
import sqlite3
import threading
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from cloud_hub.models.onnx_export import save_model, train_model
from cloud_hub.models.trainer import TrainConfig
from edge_node.app import EdgeNode, Timers
from edge_node.delivery.outbox import Outbox
from edge_node.delivery.outgoing import Sequencer
from edge_node.delivery.transport import Connected, Event, Incoming, PubAck, Published
from edge_node.lifecycle.control import Control, ControlSettings
from edge_node.lifecycle.ledger import Ledger
from edge_node.lifecycle.model_store import ModelStore
from edge_node.lifecycle.probation import ProbationPolicy
from edge_node.lifecycle.switcher import Switcher
from edge_node.scoring.batcher import ResultBatcher
from edge_node.scoring.events import EpisodeConfig
from edge_node.scoring.pipeline import Pipeline, Scorer
from edge_node.scoring.runtime import ModelRuntime
from edge_node.sources.simulator import PumpSimulator
from edge_node.telemetry.stats import PowerModel
from schemas.codec import decode, encode
from schemas.commands import split_artifact
from schemas.manifest import Manifest
from schemas.messages import Capabilities, Deploy, ModelChunk, ModelRef, Ping, Receipt
from schemas.packing import unpack_f32
from schemas.topics import model_chunk_topic
from tests.fakes import InlineExecutor, NanScorer

NODE = "pump-01"
WALL = 1_767_225_600.0


class FakeTransport:
    """Acknowledges every publish at once and records it, and confirms it with the hub's
    receipt as a hub that applied it would; the test puts incoming messages."""

    def __init__(self) -> None:
        self.events: queue.Queue[Event] = queue.Queue()
        self.connected = threading.Event()
        self.published: list[tuple[str, bytes, bool]] = []
        self.topics: set[str] = set()
        self.confirm = True  # False: a broker that acks but never delivers to the hub
        self._mid = 0

    def start(self) -> None:
        self.connected.set()
        self.events.put(Connected(session_present=False))

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> Published:
        self._mid += 1
        self.published.append((topic, payload, retain))
        self.events.put(PubAck(self._mid, True, "Success"))
        if not retain and self.confirm:
            env = msgspec.msgpack.decode(payload)
            receipt = Receipt(
                node=NODE, boot="hub", seq=self._mid, ts=WALL, of_boot=env["boot"],
                ranges=[(env["seq"], env["seq"] + 1)],
            )  # fmt: skip
            self.events.put(Incoming(f"edgeml/v1/{NODE}/receipt", encode(receipt)))
        return Published(self._mid, True, "")

    def subscribe(self, topic: str) -> None:
        self.topics.add(topic)

    def unsubscribe(self, topic: str) -> None:
        self.topics.discard(topic)

    def stop(
        self, offline_topic: str = "", offline_payload: bytes = b"", timeout: float = 2.0
    ) -> None:
        self.connected.clear()

    def taken(self, kind: str) -> list[Any]:
        """Decoded messages published on this node's ``kind`` topic, oldest first."""
        topic = f"edgeml/v1/{NODE}/{kind}"
        return [decode(kind, p) for t, p, _ in self.published if t == topic]


def simulator() -> PumpSimulator:
    return PumpSimulator(seed=3, rate_hz=1.0, speed=0, wall_start=WALL, faults=[], max_block=20)


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[bytes, Manifest]]:
    sim = PumpSimulator(seed=9, rate_hz=1.0, speed=0, wall_start=0.0, faults=[], max_block=800)
    block = sim.poll(0.0)
    assert block is not None
    return {
        v: train_model(
            block.values[i * 400 : (i + 1) * 400],
            sim.channels,
            name="pump",
            version=v,
            trained_by="test",
            config=TrainConfig(window=4),
            now=0,
        )
        for i, v in enumerate(("1", "2"))
    }


def build(
    root: Path,
    models: dict[str, tuple[bytes, Manifest]],
    nan_v2: bool = False,
    max_packet_bytes: int = 262144,
) -> tuple[EdgeNode, FakeTransport]:
    source = simulator()
    store = ModelStore(root / "models")
    save_model(root / "v1", *models["1"])
    store.activate(store.install(root / "v1"))

    def load(path: Path) -> Scorer:
        runtime = ModelRuntime.load(path, sensors=source.channels)
        return NanScorer(runtime) if nan_v2 and runtime.ref.version == "2" else runtime

    pipeline = Pipeline(
        load(store.path(ModelRef("pump", "1"))),
        source.channels,
        ResultBatcher(20, 1.0),
        EpisodeConfig(),
    )
    seq = Sequencer(NODE, "boot-1")
    transport = FakeTransport()
    switcher = Switcher(
        store=store,
        pipeline=pipeline,
        load=load,
        executor=InlineExecutor(),
        probation=ProbationPolicy(runs=3),
    )
    control = Control(
        ControlSettings(NODE, source.channels),
        seq=seq,
        switcher=switcher,
        subscriber=transport,
        ledger=Ledger(root / "commands.json"),
        started=0.0,
    )
    node = EdgeNode(
        seq=seq,
        source=source,
        pipeline=pipeline,
        control=control,
        outbox=Outbox(root / "outbox.db", 10_000_000),
        transport=transport,
        timers=Timers(
            telemetry_s=3600.0, drift_s=3600.0, max_handed=100, max_packet_bytes=max_packet_bytes
        ),
        power=PowerModel(),
        capabilities=Capabilities(
            channels=source.channels,
            sample_hz=1.0,
            memory_mb=1.0,
            cpu_count=1,
            onnx_opset=17,
            ort_version="x",
            platform="test",
        ),
        started_at=WALL,
    )
    node.start(0.0, WALL)
    return node, transport


def steps(node: EdgeNode, n: int, start: float = 0.0) -> None:
    for i in range(n):
        node.step(start + i, WALL + start + i, idle_wait=0.0)


def deploy(node: EdgeNode, transport: FakeTransport, onnx: bytes, manifest: Manifest) -> None:
    parts = split_artifact(onnx, 256)
    command = Deploy(
        node=NODE,
        boot="hub",
        seq=1,
        ts=WALL,
        id="d-1",
        issued_at=WALL,
        expires_at=WALL + 600,
        manifest=manifest,
        size=len(onnx),
        chunk_size=256,
        chunks=len(parts),
    )
    transport.events.put(Incoming(f"edgeml/v1/{NODE}/cmd", encode(command)))
    steps(node, 1, start=10.0)
    ref = ModelRef(manifest.name, manifest.version)
    for i, data in enumerate(parts):
        chunk = ModelChunk(
            node="hub", boot="h", seq=i, ts=WALL, model=ref, index=i, chunks=len(parts), data=data
        )
        transport.events.put(Incoming(model_chunk_topic(ref.name, ref.version, i), encode(chunk)))
    steps(node, 1, start=11.0)


def test_a_ping_over_the_transport_is_answered_through_the_outbox(
    tmp_path: Path, models: dict[str, Any]
) -> None:
    node, transport = build(tmp_path, models)
    ping = Ping(
        node=NODE, boot="hub", seq=1, ts=WALL, id="p-1", issued_at=WALL, expires_at=WALL + 60
    )
    transport.events.put(Incoming(f"edgeml/v1/{NODE}/cmd", encode(ping)))
    steps(node, 3)
    (ack,) = transport.taken("ack")
    assert (ack.command, ack.status, ack.model) == ("p-1", "applied", ModelRef("pump", "1"))


def test_deploy_over_the_transport_switches_what_results_say(
    tmp_path: Path, models: dict[str, Any]
) -> None:
    node, transport = build(tmp_path, models)
    steps(node, 3)
    deploy(node, transport, *models["2"])
    steps(node, 3, start=12.0)
    acks = transport.taken("ack")
    assert [(a.status, a.model.version) for a in acks] == [("accepted", "2"), ("applied", "2")]
    results = transport.taken("result")
    assert [r.model.version for r in results][-2:] == ["2", "2"]
    pending = sum(b.n for b in node.pipeline.flush(0.0, force=True))
    assert sum(r.n for r in results) + pending == 8 * 20, "every reading went out once"
    births = [decode("status", p) for t, p, retain in transport.published if t.endswith("/status")]
    assert [b.models[0].version for b in births] == ["1", "2"], "a new birth names the new model"
    assert transport.topics == set(), "no chunk subscription is left behind"


def test_a_probation_rollback_is_reported_at_once(tmp_path: Path, models: dict[str, Any]) -> None:
    node, transport = build(tmp_path, models, nan_v2=True)
    steps(node, 3)
    deploy(node, transport, *models["2"])
    steps(node, 1, start=12.0)
    acks = transport.taken("ack")
    assert [a.status for a in acks] == ["accepted", "applied", "failed"]
    assert acks[-1].reason.startswith("rolled back to pump@1")
    (telemetry,) = transport.taken("telemetry")
    assert telemetry.rollbacks == 1 and telemetry.errors == {"rollback": 1}
    assert telemetry.source is None  # the simulator has no device connection to report
    results = transport.taken("result")
    assert all(np.isfinite(unpack_f32(r.scores)).all() for r in results)
    assert {r.model.version for r in results} == {"1"}


def test_bad_command_payloads_are_counted_not_fatal(tmp_path: Path, models: dict[str, Any]) -> None:
    node, transport = build(tmp_path, models)
    transport.events.put(Incoming(f"edgeml/v1/{NODE}/cmd", b"\xc1"))
    transport.events.put(
        Incoming(f"edgeml/v1/{NODE}/cmd", msgspec.msgpack.encode({"type": "reboot", "id": "x"}))
    )
    steps(node, 2)
    node.step(4000.0, WALL + 4000.0, idle_wait=0.0)  # telemetry is due
    (telemetry,) = transport.taken("telemetry")
    assert telemetry.errors == {"bad_command": 2}
    assert transport.taken("ack") == []


def test_messages_over_the_broker_packet_limit_are_refused_and_counted(
    tmp_path: Path, models: dict[str, Any]
) -> None:
    """The broker would drop the connection for them, and paho resend them forever."""
    small, small_transport = build(tmp_path / "small", models, max_packet_bytes=256)
    normal, normal_transport = build(tmp_path / "normal", models)
    for node in (small, normal):
        steps(node, 60)
    assert small.errors["too_large"] > 0
    assert not small_transport.taken("result")
    assert normal_transport.taken("result"), "a normal limit lets the same results through"
    assert normal.errors["too_large"] == 0


def test_what_the_hub_never_confirms_is_sent_again_and_deleted_once_it_is(
    tmp_path: Path, models: dict[str, tuple[bytes, Manifest]]
) -> None:
    node, transport = build(tmp_path, models)
    transport.confirm = False  # PUBACKs come, receipts do not: the broker lost them
    steps(node, 3)
    first = [t for t, _, _ in transport.published if t.endswith("/result")]
    assert first and node.outbox.depth >= len(first)
    node.step(3.0 + node.timers.resend_s, WALL + 20, idle_wait=0.0)  # past the resend wait
    again = [t for t, _, _ in transport.published if t.endswith("/result")]
    assert len(again) >= 2 * len(first)  # every unconfirmed result handed over again
    unconfirmed = node.seq.next_seq
    transport.confirm = True
    node.step(4.0 + 3 * node.timers.resend_s, WALL + 60, idle_wait=0.0)  # second round
    node.step(5.0 + 3 * node.timers.resend_s, WALL + 61, idle_wait=0.0)  # its receipts
    old = sqlite3.connect(node.outbox.path).execute(
        "SELECT COUNT(*) FROM outbox WHERE seq < ?", (unconfirmed,)
    )
    assert old.fetchone()[0] == 0
