"""The node's command handler: rollback, probation, start-up fallback, retrain and ping."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from edge_node.lifecycle.control import chunk_filter
from edge_node.lifecycle.model_store import StoreState
from edge_node.lifecycle.switcher import open_active
from edge_node.scoring.pipeline import Scorer
from edge_node.scoring.runtime import ModelRuntime
from schemas.manifest import Manifest
from schemas.messages import (
    Capture,
    Retrain,
    Rollback,
)
from schemas.packing import unpack_f32
from tests.fakes import NanScorer
from tests.unit.control_harness import (
    NODE,
    SOURCE,
    V1,
    V2,
    WALL,
    Node,
    deliver,
    deploy_command,
    healthy,
    ping,
    train,
)


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[bytes, Manifest]]:
    return {"1": train("1", 0), "2": train("2", 1)}


def test_rollback_walks_back_and_to_goes_forth(tmp_path: Path, models: dict[str, Any]) -> None:
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
    assert node.store.state() == StoreState(V1, None), "2 left the history: no swap back"
    assert node.batch_models(50) == [V1]
    (again,) = node.send(msgspec.structs.replace(rollback, id="r-2"))
    assert (again.status, again.reason) == ("rejected", "no previous model")
    (missing,) = node.send(msgspec.structs.replace(rollback, id="r-3", to="9"))
    assert missing.status == "failed" and "pump@9 is not installed" in missing.reason
    (forth,) = node.send(msgspec.structs.replace(rollback, id="r-4", to="2"))
    assert (forth.status, forth.model) == ("accepted", V2)
    (applied,) = node.tick()
    assert (applied.status, applied.model) == ("applied", V2)
    assert node.store.state() == StoreState(V2, V1)


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
