"""The node's command handler, deploys: chunks, checks, switch, refusals and restarts."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgspec
import pytest

from edge_node.lifecycle.model_store import StoreState
from schemas.manifest import Manifest
from schemas.messages import (
    Ack,
    ModelRef,
    Rollback,
)
from tests.unit.control_harness import (
    NODE,
    V1,
    V2,
    WALL,
    Node,
    deliver,
    deploy_command,
    ping,
    train,
)


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[bytes, Manifest]]:
    return {"1": train("1", 0), "2": train("2", 1)}


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
