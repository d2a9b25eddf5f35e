"""The node's command handler with hub keys configured: what each attack gets in its ack."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from edge_node.lifecycle.trust import Marks, Trust
from schemas.manifest import Manifest
from schemas.signing import parse_public_key, public_key_text, sign
from tests.unit.control_harness import V1, V2, WALL, Node, deliver, deploy_command, ping, train

HUB = Ed25519PrivateKey.generate()
NEXT = Ed25519PrivateKey.generate()  # the key a rotation moves to


@pytest.fixture(scope="module")
def models() -> dict[str, tuple[bytes, Manifest]]:
    return {v: train(v, seed=int(v)) for v in ("1", "2")}


def _node(root: Path, models: dict[str, tuple[bytes, Manifest]], *hub: Ed25519PrivateKey) -> Node:
    keys = [parse_public_key(public_key_text(k)) for k in hub or (HUB,)]
    return Node(root, models, trust=Trust(keys, Marks(root / "trust.json")))


def test_a_signed_ping_is_answered(tmp_path: Path, models: dict) -> None:  # type: ignore[type-arg]
    (ack,) = _node(tmp_path, models).send(sign(ping("p-1"), HUB))
    assert (ack.status, ack.model) == ("applied", V1)


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        (ping("p-2"), "unsigned command"),
        (msgspec.structs.replace(ping("p-3"), signature=bytes(64)), "bad command signature"),
        (sign(ping("p-4"), Ed25519PrivateKey.generate()), "not made by a trusted hub key"),
        (
            msgspec.structs.replace(sign(ping("p-5"), HUB), expires_at=WALL + 1e9),
            "bad command signature",
        ),
    ],
    ids=["unsigned", "garbage", "stranger", "tampered"],
)
def test_untrusted_commands_are_rejected_with_the_reason(
    tmp_path: Path,
    models: dict,  # type: ignore[type-arg]
    command: object,
    reason: str,
) -> None:
    node = _node(tmp_path, models)
    (ack,) = node.send(command)  # type: ignore[arg-type]
    assert ack.status == "rejected" and reason in ack.reason
    assert node.control.errors["untrusted_command"] == 1


def test_an_expired_signed_command_is_rejected(tmp_path: Path, models: dict) -> None:  # type: ignore[type-arg]
    late = sign(msgspec.structs.replace(ping("p-6"), expires_at=WALL - 1), HUB)
    (ack,) = _node(tmp_path, models).send(late)
    assert ack.status == "rejected" and ack.reason.startswith("expired")


def test_an_old_deploy_replayed_after_a_newer_command_is_rejected_across_a_restart(
    tmp_path: Path,
    models: dict,  # type: ignore[type-arg]
) -> None:
    onnx, manifest = models["2"]
    old = sign(deploy_command(onnx, sign(manifest, HUB), cid="d-old"), HUB)
    newer = sign(msgspec.structs.replace(ping("p-7"), issued_at=WALL + 3600), HUB)
    node = _node(tmp_path, models)
    assert node.send(newer)[0].status == "applied"
    restarted = _node(tmp_path, models)  # the mark is on disk, the old id was never seen
    (ack,) = restarted.send(old)
    assert ack.status == "rejected" and "replayed" in ack.reason


def test_a_tampered_manifest_is_rejected_and_the_model_stays(
    tmp_path: Path,
    models: dict,  # type: ignore[type-arg]
) -> None:
    onnx, manifest = models["2"]
    altered = msgspec.structs.replace(sign(manifest, HUB), threshold=1e9)
    node = _node(tmp_path, models)
    (ack,) = node.send(sign(deploy_command(onnx, altered), HUB))
    assert ack.status == "rejected" and "bad manifest signature" in ack.reason
    assert node.pipeline.scorer.ref == V1


def test_a_signed_deploy_is_applied_with_either_key_during_a_rotation(
    tmp_path: Path,
    models: dict,  # type: ignore[type-arg]
) -> None:
    onnx, manifest = models["2"]
    node = _node(tmp_path, models, HUB, NEXT)
    command = sign(deploy_command(onnx, sign(manifest, NEXT)), NEXT)
    assert node.send(command)[0].status == "accepted"
    deliver(node, onnx, V2)
    assert [a.status for a in node.tick()] == ["applied"]
    assert node.pipeline.scorer.ref == V2
    assert node.send(sign(ping("p-8"), HUB))[0].status == "applied"  # the old key still works
