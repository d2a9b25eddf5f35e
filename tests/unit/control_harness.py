"""A harness for the node's command handler: real ONNX models, a real store, fake MQTT."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from cloud_hub.models.onnx_export import save_model, train_model
from cloud_hub.models.trainer import TrainConfig
from edge_node.delivery.outgoing import Outgoing, Sequencer
from edge_node.lifecycle.control import Control, ControlSettings
from edge_node.lifecycle.ledger import Ledger
from edge_node.lifecycle.model_store import ModelStore
from edge_node.lifecycle.probation import ProbationPolicy
from edge_node.lifecycle.switcher import Switcher, open_active
from edge_node.lifecycle.trust import Trust
from edge_node.scoring.batcher import ResultBatcher
from edge_node.scoring.events import EpisodeConfig
from edge_node.scoring.pipeline import Pipeline, Scored, Scorer
from edge_node.scoring.runtime import ModelRuntime
from edge_node.sources.base import Block
from schemas.codec import encode
from schemas.commands import split_artifact
from schemas.manifest import Manifest
from schemas.messages import (
    Ack,
    Command,
    Deploy,
    ModelChunk,
    ModelRef,
    Ping,
)
from schemas.topics import model_chunk_topic
from tests.fakes import InlineExecutor

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


def train(version: str, seed: int) -> tuple[bytes, Manifest]:
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
        trust: Trust | None = None,
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
            trust=trust,
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
