"""The node's command handler with real ONNX models, a real store and fake MQTT messages."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
from numpy.typing import NDArray

from cloud_hub.onnx_export import save_model, train_model
from cloud_hub.trainer import TrainConfig
from edge_node.batcher import ResultBatcher
from edge_node.control import Control, ControlSettings, chunk_filter
from edge_node.events import EpisodeConfig
from edge_node.ledger import Ledger
from edge_node.model_store import ModelStore, StoreState
from edge_node.outgoing import Outgoing, Sequencer
from edge_node.pipeline import Pipeline, Scored, Scorer
from edge_node.probation import ProbationPolicy
from edge_node.runtime import ModelRuntime
from edge_node.sources.base import Block
from edge_node.switcher import Switcher, open_active
from schemas.codec import encode
from schemas.commands import split_artifact
from schemas.manifest import Manifest
from schemas.messages import (
    Ack,
    Capture,
    Command,
    Deploy,
    ModelChunk,
    ModelRef,
    Ping,
    Retrain,
    Rollback,
)
from schemas.packing import unpack_f32
from schemas.topics import model_chunk_topic
from tests.fakes import InlineExecutor, NanScorer

F32 = NDArray[np.float32]

NODE = "pump-01"
SOURCE = ["current", "pressure", "temperature", "voltage"]  # the model uses three of them
MODEL_CHANNELS = ["current", "pressure", "voltage"]
WALL = 1_767_225_600.0
CHUNK = 100  # bytes: the small test models travel in several chunks


def healthy(n: int, seed: int) -> F32:
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 1))
    noise = 0.3 * rng.normal(size=(n, 4))
    base = np.array([2.4, 0.1, 60.0, 228.0])
    return (base + (latent + noise) * [0.5, 0.25, 1.0, 10.0]).astype(np.float32)


def _train(version: str, seed: int) -> tuple[bytes, Manifest]:
    values = healthy(600, seed)[:, [0, 1, 3]]
    return train_model(
        values,
        MODEL_CHANNELS,
        name="pump",
        version=version,
        trained_by="test",
        config=TrainConfig(window=4),
        now=0,
    )


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[bytes, Manifest]]:
    return {"1": _train("1", 0), "2": _train("2", 1)}


@dataclass
class FakeSubscriber:
    topics: set[str] = field(default_factory=set)
    log: list[str] = field(default_factory=list)

    def subscribe(self, topic: str) -> None:
        self.topics.add(topic)
        self.log.append(f"+{topic}")

    def unsubscribe(self, topic: str) -> None:
        self.topics.discard(topic)
        self.log.append(f"-{topic}")


class Node:
    """A control, pipeline and store wired as the app wires them, driven by hand."""

    def __init__(
        self,
        root: Path,
        models: dict[str, tuple[bytes, Manifest]],
        *,
        executor: Executor | None = None,
        load: Callable[[Path], Scorer] | None = None,
    ) -> None:
        self.store = ModelStore(root / "models")
        if self.store.state().active is None:
            save_model(root / "v1", *models["1"])
            self.store.activate(self.store.install(root / "v1"))
        self.load = load or partial(ModelRuntime.load, sensors=SOURCE)
        scorer, _ = open_active(self.store, self.load)
        self.pipeline = Pipeline(scorer, SOURCE, ResultBatcher(50, 3600.0), EpisodeConfig())
        self.seq = Sequencer(NODE, "boot-1")
        self.subscriber = FakeSubscriber()
        self.switcher = Switcher(
            store=self.store,
            pipeline=self.pipeline,
            load=self.load,
            executor=executor or InlineExecutor(),
            probation=ProbationPolicy(runs=3),
        )
        self.control = Control(
            ControlSettings(NODE, SOURCE, chunk_timeout_s=5.0, chunk_retries=1, capture_buffer=500),
            seq=self.seq,
            switcher=self.switcher,
            subscriber=self.subscriber,
            ledger=Ledger(root / "commands.json"),
            started=10.0,
        )
        self.fed = 0
        self.out: list[Outgoing] = []

    def send(self, command: Command, now: float = 20.0) -> list[Ack]:
        return self._acks(
            self.control.on_message(self.control.cmd_topic, encode(command), now, WALL)
        )

    def chunk(
        self, ref: ModelRef, index: int, chunks: int, data: bytes, now: float = 20.0
    ) -> list[Ack]:
        message = ModelChunk(
            node="hub",
            boot="h",
            seq=index,
            ts=WALL,
            model=ref,
            index=index,
            chunks=chunks,
            data=data,
        )
        topic = model_chunk_topic(ref.name, ref.version, index)
        return self._acks(self.control.on_message(topic, encode(message), now, WALL))

    def tick(self, now: float = 20.0) -> list[Ack]:
        return self._acks(self.control.tick(now, WALL))

    def scored(self, n: int) -> tuple[Scored, list[Ack]]:
        block = Block(1000.0 + self.fed, 1.0, healthy(n, 100 + self.fed))
        self.fed += n
        scored = self.pipeline.process(block, 0.0, lambda: 0.0)
        return scored, self._acks(self.control.observe(block, scored, WALL))

    def batch_models(self, n: int) -> list[ModelRef]:
        scored, _ = self.scored(n)
        return [b.model for b in scored.batches]

    def _acks(self, out: list[Outgoing]) -> list[Ack]:
        self.out += out
        return [m for _, m in out if isinstance(m, Ack)]


def deploy_command(onnx: bytes, manifest: Manifest, cid: str = "d-1") -> Deploy:
    return Deploy(
        node=NODE,
        boot="hub",
        seq=1,
        ts=WALL,
        id=cid,
        issued_at=WALL,
        expires_at=WALL + 600,
        manifest=manifest,
        size=len(onnx),
        chunk_size=CHUNK,
        chunks=len(split_artifact(onnx, CHUNK)),
    )


def ping(cid: str) -> Ping:
    return Ping(node=NODE, boot="hub", seq=2, ts=WALL, id=cid, issued_at=WALL, expires_at=WALL + 60)


def deliver(
    node: Node, onnx: bytes, ref: ModelRef, order: list[int] | None = None, now: float = 20.0
) -> list[Ack]:
    """Send chunks of ``onnx`` (all, in order, by default); the acks they caused."""
    parts = split_artifact(onnx, CHUNK)
    acks: list[Ack] = []
    for i in order if order is not None else range(len(parts)):
        acks += node.chunk(ref, i, len(parts), parts[i], now)
    return acks


V1, V2 = ModelRef("pump", "1"), ModelRef("pump", "2")


def test_a_full_deploy_over_messages(tmp_path: Path, models: dict[str, Any]) -> None:
    node = Node(tmp_path, models)
    assert node.batch_models(50) == [V1]
    onnx, manifest = models["2"]
    command = deploy_command(onnx, manifest)
    chunks = command.chunks
    assert chunks > 3, "the test needs an artifact of several chunks"
    (accepted,) = node.send(command)
    assert (accepted.status, accepted.model, accepted.command_type) == ("accepted", V2, "deploy")
    assert accepted.detail == {"need": f"0-{chunks - 1}"}
    assert node.subscriber.topics == {"edgeml/v1/models/pump/2/+"}
    node.chunk(ModelRef("other", "9"), 0, 1, b"x")  # another model's chunk: ignored
    shuffled = [chunks - 1, 0, 0, *range(1, chunks - 1)]  # one of them twice
    assert deliver(node, onnx, V2, shuffled) == [], "the ack comes once the model is loaded"
    assert node.subscriber.topics == set()
    (applied,) = node.tick()
    assert (applied.status, applied.model, applied.command) == ("applied", V2, "d-1")
    assert node.store.state() == StoreState(V2, V1)
    assert node.batch_models(50) == [V2]
    kinds = [kind.value for kind, _ in node.out]
    assert kinds == ["ack", "drift", "ack"], "the old model's drift report goes out at the switch"


def test_the_old_model_scores_while_the_new_one_loads(
    tmp_path: Path, models: dict[str, Any]
) -> None:
    worker = ThreadPoolExecutor(max_workers=1)
    node = Node(tmp_path, models, executor=worker)
    onnx, manifest = models["2"]
    node.send(deploy_command(onnx, manifest))
    deliver(node, onnx, V2)
    assert node.batch_models(50) == [V1]  # the switch happens only on a tick after the load
    worker.shutdown(wait=True)
    assert [a.status for a in node.tick()] == ["applied"]
    assert node.batch_models(50) == [V2]


def test_a_quiet_hub_is_asked_again_then_the_deploy_fails(
    tmp_path: Path, models: dict[str, Any]
) -> None:
    node = Node(tmp_path, models)
    onnx, manifest = models["2"]
    command = deploy_command(onnx, manifest)
    node.send(command, now=0.0)
    deliver(node, onnx, V2, [0, 1], now=0.0)
    assert node.tick(4.0) == []
    (again,) = node.tick(5.0)
    assert (again.status, again.detail) == ("accepted", {"need": f"2-{command.chunks - 1}"})
    (failed,) = node.tick(10.0)
    assert failed.status == "failed"
    assert (
        failed.reason == f"chunks 2-{command.chunks - 1} never arrived (asked 2 times, 5 s apart)"
    )
    assert node.subscriber.topics == set() and node.store.state().active == V1


def test_a_corrupt_artifact_fails_the_deploy(tmp_path: Path, models: dict[str, Any]) -> None:
    node = Node(tmp_path, models)
    onnx, manifest = models["2"]
    node.send(deploy_command(onnx, manifest))
    rotten = bytearray(onnx)
    rotten[-100] ^= 0xFF
    (failed,) = deliver(node, bytes(rotten), V2)
    assert failed.status == "failed" and failed.reason.startswith("sha256 mismatch")
    assert node.tick() == [] and node.store.state().active == V1


def test_a_model_that_does_not_load_fails_the_deploy(
    tmp_path: Path, models: dict[str, Any]
) -> None:
    node = Node(tmp_path, models)
    onnx, manifest = models["2"]
    lying = msgspec.structs.replace(
        manifest, input=msgspec.structs.replace(manifest.input, window=8)
    )
    node.send(deploy_command(onnx, lying))
    deliver(node, onnx, V2)
    (failed,) = node.tick()
    assert failed.status == "failed" and "shape" in failed.reason and failed.model == V2
    assert node.store.state().active == V1 and node.pipeline.scorer.ref == V1
    assert node.batch_models(50) == [V1]


def test_commands_wait_for_the_deploy_in_progress(tmp_path: Path, models: dict[str, Any]) -> None:
    node = Node(tmp_path, models)
    onnx, manifest = models["2"]
    node.send(deploy_command(onnx, manifest))
    rollback = Rollback(
        node=NODE, boot="hub", seq=3, ts=WALL, id="r-1", issued_at=WALL, expires_at=WALL + 60
    )
    (refused,) = node.send(rollback)
    assert (refused.status, refused.reason) == ("rejected", "deploy d-1 in progress")
    (pong,) = node.send(ping("p-1"))
    assert pong.status == "applied", "a ping is answered during a deploy"


def test_a_repeated_command_is_answered_not_applied_even_after_a_restart(
    tmp_path: Path, models: dict[str, Any]
) -> None:
    node = Node(tmp_path, models)
    onnx, manifest = models["2"]
    command = deploy_command(onnx, manifest)
    node.send(command)
    deliver(node, onnx, V2)
    node.tick()
    restarted = Node(tmp_path, models)
    assert restarted.pipeline.scorer.ref == V2
    assert restarted.control.start(WALL) == []
    (again,) = restarted.send(command)
    assert (again.status, again.model) == ("applied", V2)
    assert again.detail == {"duplicate": "true"}
    assert restarted.subscriber.log == [] and restarted.store.state() == StoreState(V2, V1)


def test_a_restart_fails_what_it_interrupted(tmp_path: Path, models: dict[str, Any]) -> None:
    node = Node(tmp_path, models)
    onnx, manifest = models["2"]
    node.send(deploy_command(onnx, manifest))
    deliver(node, onnx, V2, [0])
    restarted = Node(tmp_path, models)  # the process died mid-download
    (failed,) = [m for _, m in restarted.control.start(WALL) if isinstance(m, Ack)]
    assert (failed.command, failed.status) == ("d-1", "failed")
    assert "restarted" in failed.reason
    assert restarted.subscriber.log == ["-edgeml/v1/models/pump/2/+"]
    assert restarted.store.state().active == V1


def test_rollback_goes_back_and_forth(tmp_path: Path, models: dict[str, Any]) -> None:
    node = Node(tmp_path, models)
    rollback = Rollback(
        node=NODE, boot="hub", seq=3, ts=WALL, id="r-0", issued_at=WALL, expires_at=WALL + 60
    )
    (nothing,) = node.send(rollback)
    assert (nothing.status, nothing.reason) == ("rejected", "no previous model")
    onnx, manifest = models["2"]
    node.send(deploy_command(onnx, manifest))
    deliver(node, onnx, V2)
    node.tick()
    (accepted,) = node.send(msgspec.structs.replace(rollback, id="r-1"))
    assert (accepted.status, accepted.model) == ("accepted", V1)
    (applied,) = node.tick()
    assert (applied.status, applied.model, applied.command_type) == ("applied", V1, "rollback")
    assert node.store.state() == StoreState(V1, V2)
    assert node.batch_models(50) == [V1]


def test_a_model_scoring_nan_on_probation_is_rolled_back(
    tmp_path: Path, models: dict[str, Any]
) -> None:
    def load(path: Path) -> Scorer:
        runtime = ModelRuntime.load(path, sensors=SOURCE)
        return NanScorer(runtime) if runtime.ref == V2 else runtime

    node = Node(tmp_path, models, load=load)
    node.scored(20)
    onnx, manifest = models["2"]
    node.send(deploy_command(onnx, manifest))
    deliver(node, onnx, V2)
    assert [a.status for a in node.tick()] == ["applied"]
    scored, (failed,) = node.scored(30)
    assert (failed.command, failed.status, failed.model) == ("d-1", "failed", V2)
    assert failed.reason == "rolled back to pump@1: model produced NaN or infinite scores"
    assert node.store.state() == StoreState(V1, None), "as before the deploy"
    assert node.control.rollbacks == 1 and node.control.errors["rollback"] == 1
    # The 30 readings the new model failed on were scored by the old one.
    assert scored.batches == []
    (batch,) = node.pipeline.flush(0.0, force=True)
    assert (batch.model, batch.first, batch.n) == (V1, 20, 30)
    assert np.isfinite(batch.scores).all()


def test_a_corrupt_active_model_falls_back_to_the_previous_one(
    tmp_path: Path, models: dict[str, Any]
) -> None:
    node = Node(tmp_path, models)
    onnx, manifest = models["2"]
    node.send(deploy_command(onnx, manifest))
    deliver(node, onnx, V2)
    node.tick()
    (node.store.path(V2) / "model.onnx").write_bytes(b"not a model any more")
    scorer, problem = open_active(node.store, node.load)
    assert scorer.ref == V1
    assert "pump@2 failed to load" in problem and "fell back to pump@1" in problem
    assert node.store.state() == StoreState(V1, None)


def test_retrain_last_uploads_the_buffered_readings(tmp_path: Path, models: dict[str, Any]) -> None:
    node = Node(tmp_path, models)
    for n in (200, 250, 150):
        node.scored(n)
    retrain = Retrain(
        node=NODE,
        boot="hub",
        seq=4,
        ts=WALL,
        id="t-1",
        issued_at=WALL,
        expires_at=WALL + 60,
        readings=450,
        mode="last",
    )
    (applied,) = node.send(retrain)
    assert (applied.status, applied.detail) == ("applied", {"readings": "450", "chunks": "1"})
    (capture,) = [m for _, m in node.out if isinstance(m, Capture)]
    assert (capture.command, capture.chunk, capture.chunks, capture.n) == ("t-1", 0, 1, 450)
    assert capture.channels == SOURCE and capture.t0 == 1000.0 + 150
    # The blocks were healthy(n, 100 + readings before them): the last 450 readings as read.
    expected = np.concatenate([healthy(200, 100)[-50:], healthy(250, 300), healthy(150, 550)])
    np.testing.assert_array_equal(unpack_f32(capture.data, 4), expected)
    assert [k.value for k, _ in node.out].index("capture") < [k.value for k, _ in node.out].index(
        "ack"
    )


def test_retrain_next_waits_for_new_readings(tmp_path: Path, models: dict[str, Any]) -> None:
    node = Node(tmp_path, models)
    node.scored(10)
    retrain = Retrain(
        node=NODE,
        boot="hub",
        seq=4,
        ts=WALL,
        id="t-2",
        issued_at=WALL,
        expires_at=WALL + 60,
        readings=60,
    )
    (accepted,) = node.send(retrain)
    assert accepted.status == "accepted"
    assert node.scored(40)[1] == []
    _, (applied,) = node.scored(40)
    assert applied.detail == {"readings": "60", "chunks": "1"}
    (capture,) = [m for _, m in node.out if isinstance(m, Capture)]
    data = unpack_f32(capture.data, 4)
    np.testing.assert_array_equal(data, np.concatenate([healthy(40, 110), healthy(40, 150)])[:60])
    assert capture.t0 == 1010.0


def test_ping_and_bad_payloads(tmp_path: Path, models: dict[str, Any]) -> None:
    node = Node(tmp_path, models)
    (pong,) = node.send(ping("p-1"), now=22.5)
    assert (pong.status, pong.model) == ("applied", V1)
    assert pong.detail == {"uptime_s": "12.5", "boot": "boot-1"}
    assert node.control.on_message(node.control.cmd_topic, b"\xc1garbage", 0.0, WALL) == []
    bad_chunk = node.control.on_message(chunk_filter(V2)[:-1] + "0", b"\x93", 0.0, WALL)
    assert bad_chunk == []
    assert node.control.errors == {"bad_command": 1, "bad_chunk": 1}
