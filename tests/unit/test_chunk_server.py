"""The chunk server: exactly the chunks a deploy ack asks for, and paho's queue limit respected."""

from __future__ import annotations

from typing import Any, cast

import msgspec
import pytest

from cloud_hub.commands.identity import HubIdentity
from cloud_hub.models.catalog import UnknownModel
from cloud_hub.models.chunks import ChunkServer, PublishOutcome, chunk_count
from schemas.codec import decode
from schemas.commands import DEFAULT_CHUNK_SIZE, split_artifact
from schemas.messages import Ack, ModelChunk, ModelRef
from schemas.samples import SAMPLES
from schemas.topics import model_chunk_topic

NOW = 1_800_000_000.0
MODEL = ModelRef("pump-pca", "2")
ARTIFACT = bytes(range(256)) * 3 + b"tail"  # 772 bytes: 13 chunks of 64, the last short
SIZE = 64


class Artifacts:
    """The catalog's artifact lookup."""

    def __init__(self, models: dict[ModelRef, bytes]) -> None:
        self.models = models
        self.reads = 0

    def artifact(self, name: str, version: str) -> bytes:
        self.reads += 1
        try:
            return self.models[ModelRef(name, version)]
        except KeyError:
            raise UnknownModel(f"{name}@{version} is not in the catalog") from None


class Publisher:
    """paho's publish: ``full`` while ``room`` is 0 (MQTT_ERR_QUEUE_SIZE)."""

    def __init__(self, room: int = 10**6, outcome: PublishOutcome = "queued") -> None:
        self.room = room
        self.outcome = outcome
        self.sent: list[tuple[str, bytes]] = []

    def offer(self, topic: str, payload: bytes) -> PublishOutcome:
        if self.room == 0:
            return "full"
        if self.outcome == "queued":
            self.room -= 1
            self.sent.append((topic, payload))
        return self.outcome

    def chunks(self) -> list[ModelChunk]:
        out = []
        for topic, payload in self.sent:
            chunk = cast(ModelChunk, decode("model_chunk", payload, topic))
            assert topic == model_chunk_topic(chunk.model.name, chunk.model.version, chunk.index)
            out.append(chunk)
        return out


def accepted(need: str | None, command: str = "c1", **changes: Any) -> Ack:
    fields: dict[str, Any] = {
        "command": command,
        "command_type": "deploy",
        "status": "accepted",
        "model": MODEL,
        "detail": {} if need is None else {"need": need},
        **changes,
    }
    return cast(Ack, msgspec.structs.replace(SAMPLES["ack"], **fields))


def server(
    publisher: Publisher,
    sizes: dict[str, int] | None = None,
    models: dict[ModelRef, bytes] | None = None,
    **kwargs: Any,
) -> ChunkServer:
    known = {"c1": SIZE} if sizes is None else sizes
    return ChunkServer(
        Artifacts({MODEL: ARTIFACT} if models is None else models),
        known.get,
        publisher,
        HubIdentity("hub-1", boot="b00t"),
        **kwargs,
    )


def test_publishes_exactly_the_chunks_in_need() -> None:
    publisher = Publisher()
    chunks = server(publisher)
    assert chunks.on_ack(accepted("0,2-3,12"), NOW) == 4
    assert chunks.pump(NOW) == 4
    got = publisher.chunks()
    parts = split_artifact(ARTIFACT, SIZE)
    assert [c.index for c in got] == [0, 2, 3, 12]
    assert [c.data for c in got] == [parts[0], parts[2], parts[3], parts[12]]
    assert {(c.node, c.boot, c.model, c.chunks, c.ts) for c in got} == {
        ("hub-1", "b00t", MODEL, len(parts), NOW)
    }
    assert [c.seq for c in got] == [0, 1, 2, 3]
    assert chunks.published == 4 and chunks.pending == 0


def test_all_chunks_rebuild_the_artifact() -> None:
    publisher = Publisher()
    chunks = server(publisher)
    chunks.on_ack(accepted(f"0-{chunk_count(len(ARTIFACT), SIZE) - 1}"), NOW)
    chunks.pump(NOW)
    assert b"".join(c.data for c in publisher.chunks()) == ARTIFACT


def test_unknown_command_uses_the_default_chunk_size() -> None:
    publisher = Publisher()
    chunks = server(publisher, sizes={})
    chunks.on_ack(accepted("0"), NOW)
    chunks.pump(NOW)
    [chunk] = publisher.chunks()
    assert len(ARTIFACT) < DEFAULT_CHUNK_SIZE
    assert (chunk.chunks, chunk.data) == (1, ARTIFACT)


@pytest.mark.parametrize(
    "ack",
    [
        accepted(None),
        accepted("0", status="applied"),
        accepted("0", command_type="retrain"),
    ],
    ids=["no-need", "applied", "not-a-deploy"],
)
def test_other_acks_publish_nothing(ack: Ack) -> None:
    publisher = Publisher()
    chunks = server(publisher)
    assert chunks.on_ack(ack, NOW) == 0
    assert chunks.pump(NOW) == 0
    assert publisher.sent == [] and sum(chunks.refused.values()) == 0


def test_an_unknown_model_is_counted_not_raised() -> None:
    publisher = Publisher()
    chunks = server(publisher)
    assert chunks.on_ack(accepted("0", model=ModelRef("ghost", "9")), NOW) == 0
    assert chunks.refused["unknown_model"] == 1
    assert publisher.sent == []


@pytest.mark.parametrize("need", ["13", "0-99", "x", "3-1"])
def test_a_need_outside_the_artifact_is_a_bad_request(need: str) -> None:
    publisher = Publisher()
    chunks = server(publisher)
    assert chunks.on_ack(accepted(need), NOW) == 0
    assert chunks.refused["bad_request"] == 1
    assert chunks.pending == 0


def test_queue_full_keeps_the_chunk_and_retries_it_unchanged() -> None:
    publisher = Publisher(room=2)
    chunks = server(publisher)
    chunks.on_ack(accepted("0-4"), NOW)
    assert chunks.pump(NOW) == 2
    assert chunks.pending == 3
    publisher.room = 1
    assert chunks.pump(NOW + 1) == 1
    publisher.room = 10
    assert chunks.pump(NOW + 2) == 2
    got = publisher.chunks()
    assert [c.index for c in got] == [0, 1, 2, 3, 4]
    # The refused attempt did not use up a seq: the stream has no gaps.
    assert [c.seq for c in got] == [0, 1, 2, 3, 4]
    assert chunks.pending == 0 and chunks.published == 5


def test_pump_respects_its_budget() -> None:
    publisher = Publisher()
    chunks = server(publisher)
    chunks.on_ack(accepted("0-9"), NOW)
    assert chunks.pump(NOW, budget=3) == 3
    assert chunks.pending == 7


def test_the_same_chunk_asked_twice_before_it_went_is_sent_once() -> None:
    publisher = Publisher()
    artifacts = {MODEL: ARTIFACT}
    chunks = server(publisher, sizes={"c1": SIZE, "c2": SIZE}, models=artifacts)
    assert chunks.on_ack(accepted("0-2"), NOW) == 3
    assert chunks.on_ack(accepted("1-3", command="c2", node="pump-02"), NOW) == 1
    chunks.pump(NOW)
    assert [c.index for c in publisher.chunks()] == [0, 1, 2, 3]
    # Once sent, a new request (a node retrying) is served again.
    chunks.on_ack(accepted("1"), NOW)
    chunks.pump(NOW)
    assert [c.index for c in publisher.chunks()][-1] == 1


def test_the_pending_queue_is_bounded() -> None:
    publisher = Publisher()
    chunks = server(publisher, max_pending=4)
    assert chunks.on_ack(accepted("0-9"), NOW) == 4
    assert chunks.refused["queue_full"] == 1


def test_a_chunk_the_client_refuses_is_dropped_and_counted() -> None:
    publisher = Publisher(outcome="refused")
    chunks = server(publisher)
    chunks.on_ack(accepted("0-1"), NOW)
    assert chunks.pump(NOW) == 0
    assert chunks.pending == 0
    assert chunks.refused["publish_refused"] == 2


def test_the_artifact_is_read_once_for_many_chunks() -> None:
    publisher = Publisher()
    artifacts = Artifacts({MODEL: ARTIFACT})
    chunks = ChunkServer(artifacts, {"c1": SIZE}.get, publisher, HubIdentity("hub", "b"))
    chunks.on_ack(accepted("0-12"), NOW)
    chunks.pump(NOW)
    assert artifacts.reads == 1
