"""The node's command handler, shadow runs: fetch like a deploy, run beside the active model,
report, and end (done, stopped, replaced, by a deploy of the candidate, on a failed load)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import msgspec
import pytest

from edge_node.lifecycle.model_store import StoreState
from edge_node.scoring.pipeline import Scorer
from edge_node.scoring.runtime import ModelRuntime
from schemas.commands import split_artifact
from schemas.fit import Needs
from schemas.manifest import MODEL_FILE, Manifest
from schemas.messages import (
    Ack,
    Capabilities,
    ModelRef,
    Shadow,
    ShadowReport,
    StopShadow,
)
from tests.unit.control_harness import (
    CHUNK,
    NODE,
    SOURCE,
    V1,
    V2,
    WALL,
    Node,
    deliver,
    deploy_command,
    train,
)

REPORT_S = 60.0  # the harness's ControlSettings default


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[bytes, Manifest]]:
    return {"1": train("1", 0), "2": train("2", 1), "3": train("3", 2)}


def shadow_command(
    onnx: bytes, manifest: Manifest, cid: str = "s-1", duration_s: float = 300.0
) -> Shadow:
    return Shadow(
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
        duration_s=duration_s,
        cpu_budget=1.0,
    )


def stop_command(cid: str = "x-1") -> StopShadow:
    return StopShadow(
        node=NODE, boot="hub", seq=2, ts=WALL, id=cid, issued_at=WALL, expires_at=WALL + 60
    )


def reports(node: Node) -> list[ShadowReport]:
    return [m for _, m in node.out if isinstance(m, ShadowReport)]


def started(node: Node, models: dict[str, Any], version: str = "2", cid: str = "s-1") -> Ack:
    onnx, manifest = models[version]
    (accepted,) = node.send(shadow_command(onnx, manifest, cid), now=20.0)
    assert (accepted.status, accepted.command_type) == ("accepted", "shadow")
    assert accepted.detail["need"].startswith("0-")
    deliver(node, onnx, ModelRef("pump", version))
    (applied,) = node.tick(20.0)
    return applied


def test_a_shadow_run_reports_both_arms_and_changes_nothing_the_node_publishes(
    tmp_path: Path, models: dict[str, Any]
) -> None:
    node = Node(tmp_path, models)
    applied = started(node, models)
    assert (applied.status, applied.model) == ("applied", V2)
    # Installed beside the active model, not active.
    assert node.store.state() == StoreState(V1, None)
    assert (node.store.path(V2) / MODEL_FILE).exists()
    outputs = [node.scored(40)[0] for _ in range(6)]
    assert node.tick(20.0 + REPORT_S - 1) == [] and reports(node) == []
    node.tick(20.0 + REPORT_S)
    (report,) = reports(node)
    assert (report.state, report.command) == ("running", "s-1")
    assert (report.active.model, report.candidate.model) == (V1, V2)
    # The candidate's window is 4: its first 3 readings only warm it up, in both arms.
    assert report.active.readings == report.candidate.readings == 240 - 3
    assert report.candidate.unscored == 0
    assert sum(report.candidate.score_counts) == report.candidate.readings
    assert 0.0 <= report.agreement <= 1.0
    node.tick(20.0 + 300.0)  # its duration is over
    final = reports(node)[-1]
    assert final.state == "done"
    assert node.pipeline.shadow is None
    batches = [b for out in outputs for b in out.batches]
    assert batches and {b.model for b in batches} == {V1}
    assert {c.model for out in outputs for c in out.changes} <= {V1}


def test_stop_ends_the_run_and_a_second_stop_is_refused(
    tmp_path: Path, models: dict[str, Any]
) -> None:
    node = Node(tmp_path, models)
    started(node, models)
    node.scored(20)
    (ack,) = node.send(stop_command(), now=30.0)
    assert ack.status == "applied"
    assert [(r.state, r.reason) for r in reports(node)] == [("stopped", "stopped by x-1")]
    assert reports(node)[-1].candidate.readings == 17
    (again,) = node.send(stop_command("x-2"), now=31.0)
    assert (again.status, again.reason) == ("rejected", "no shadow run in progress")


def test_a_stop_before_the_candidate_arrives_ends_the_fetch(
    tmp_path: Path, models: dict[str, Any]
) -> None:
    node = Node(tmp_path, models)
    onnx, manifest = models["2"]
    node.send(shadow_command(onnx, manifest))
    acks = node.send(stop_command())
    assert [(a.command, a.status) for a in acks] == [("s-1", "failed"), ("x-1", "applied")]
    assert node.subscriber.topics == set()
    assert [r.state for r in reports(node)] == ["stopped"]


def test_a_new_shadow_replaces_the_running_one(tmp_path: Path, models: dict[str, Any]) -> None:
    node = Node(tmp_path, models)
    started(node, models)
    node.scored(20)
    applied = started(node, models, version="3", cid="s-2")
    assert (applied.status, applied.model) == ("applied", ModelRef("pump", "3"))
    (first,) = reports(node)
    assert (first.command, first.state, first.reason) == (
        "s-1",
        "stopped",
        "replaced by shadow s-2",
    )
    assert node.pipeline.shadow is not None


def test_a_deploy_of_the_candidate_ends_the_run_and_switches(
    tmp_path: Path, models: dict[str, Any]
) -> None:
    node = Node(tmp_path, models)
    started(node, models)
    node.scored(20)
    onnx, manifest = models["2"]
    (accepted,) = node.send(deploy_command(onnx, manifest, "d-9"), now=30.0)
    assert accepted.status == "accepted"
    (report,) = reports(node)
    assert (report.state, report.reason) == ("stopped", "deploy d-9 of the candidate")
    deliver(node, onnx, V2, now=30.0)
    assert [a.status for a in node.tick(30.0)] == ["applied"]
    assert node.pipeline.scorer.ref == V2


def test_a_candidate_that_does_not_load_fails_and_the_active_model_goes_on(
    tmp_path: Path, models: dict[str, Any]
) -> None:
    def load(path: Path) -> Scorer:
        if path.name == "2":
            raise ValueError("opset 99 is not supported")
        return ModelRuntime.load(path, sensors=SOURCE)

    node = Node(tmp_path, models, load=load)
    failed = started(node, models)
    assert (failed.status, failed.reason) == ("failed", "opset 99 is not supported")
    (report,) = reports(node)
    assert (report.state, report.reason, report.candidate.readings) == (
        "failed",
        "opset 99 is not supported",
        0,
    )
    assert node.pipeline.shadow is None
    assert node.batch_models(60) == [V1]


def test_a_candidate_must_fit_beside_the_active_model(
    tmp_path: Path, models: dict[str, Any]
) -> None:
    node = Node(tmp_path, models)
    capabilities = Capabilities(
        channels=SOURCE,
        sample_hz=10.0,
        memory_mb=100.0,
        cpu_count=1,
        onnx_opset=21,
        ort_version="1",
        platform="x",
    )
    node.control.settings = dataclasses.replace(node.control.settings, capabilities=capabilities)
    onnx, manifest = models["2"]
    heavy = msgspec.structs.replace(manifest, needs=Needs(memory_mb=60.0, power_w=1.0))
    active = node.pipeline.scorer.manifest
    assert active.needs is not None
    big_active = msgspec.structs.replace(active.needs, memory_mb=60.0)
    node.pipeline.scorer.manifest.needs = big_active
    (refused,) = node.send(shadow_command(onnx, heavy))
    assert refused.status == "rejected"
    assert refused.reason == "does not fit this node beside the active model: CHECK memory"
    # Alone it would fit: a deploy of it is accepted.
    (accepted,) = node.send(deploy_command(onnx, heavy, "d-2"))
    assert accepted.status == "accepted"


def test_a_deploy_after_a_shadow_run_loads_the_candidate_without_fetching_it(
    tmp_path: Path, models: dict[str, Any]
) -> None:
    node = Node(tmp_path, models)
    started(node, models)
    node.send(stop_command(), now=25.0)
    onnx, manifest = models["2"]
    (accepted,) = node.send(deploy_command(onnx, manifest, "d-5"), now=30.0)
    assert (accepted.status, accepted.detail) == ("accepted", {"need": ""})
    assert node.subscriber.topics == set()
    (applied,) = node.tick(30.0)
    assert (applied.status, applied.model) == ("applied", V2)
    assert node.store.state() == StoreState(V2, V1)


def test_a_damaged_installed_candidate_is_fetched_again_by_the_deploy(
    tmp_path: Path, models: dict[str, Any]
) -> None:
    node = Node(tmp_path, models)
    started(node, models)
    node.send(stop_command(), now=25.0)
    (node.store.path(V2) / MODEL_FILE).write_bytes(b"not a model")
    onnx, manifest = models["2"]
    command = deploy_command(onnx, manifest, "d-6")
    (accepted,) = node.send(command, now=30.0)
    assert accepted.detail == {"need": ""}
    (fetch,) = node.tick(30.0)  # the installed copy fails to load: ask for the chunks
    assert (fetch.status, fetch.detail) == ("accepted", {"need": f"0-{command.chunks - 1}"})
    deliver(node, onnx, V2, now=30.0)
    (applied,) = node.tick(30.0)
    assert (applied.status, applied.model) == ("applied", V2)
