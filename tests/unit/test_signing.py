"""Signatures over commands and manifests (schemas/signing.py) and the node's trust checks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgspec
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_hub.commands import keys
from edge_node.lifecycle.trust import REORDER_S, Accepted, Marks, check
from schemas.codec import decode, encode
from schemas.manifest import decode_manifest, encode_manifest
from schemas.messages import Command, Deploy, Ping, Retrain, Rollback
from schemas.samples import SAMPLES
from schemas.signing import (
    PublicKey,
    SignatureError,
    canonical,
    parse_public_key,
    public_key_text,
    sign,
    verify,
)
from tests.unit.control_harness import WALL, deploy_command, train

HUB = Ed25519PrivateKey.generate()
OTHER = Ed25519PrivateKey.generate()
ENV: dict[str, Any] = {"node": "pump-01", "boot": "b", "seq": 1, "ts": WALL, "issued_at": WALL}


def trusted(*private: Ed25519PrivateKey) -> list[PublicKey]:
    return [parse_public_key(public_key_text(p)) for p in private]


def commands() -> list[Command]:
    end = WALL + 600
    return [
        Ping(**ENV, id="p", expires_at=end),
        Rollback(**ENV, id="r", expires_at=end),
        Retrain(**ENV, id="t", expires_at=end, readings=100, mode="last"),
        Rollback(**ENV, id="r3", expires_at=end, to="3"),
    ]


@pytest.mark.parametrize("command", commands(), ids=lambda c: type(c).__name__)
def test_a_signed_command_checks_after_the_wire(command: Command) -> None:
    received: Command = decode("cmd", encode(sign(command, HUB)))
    assert verify(received, trusted(HUB)).key_id == trusted(HUB)[0].key_id


def test_a_signed_manifest_checks_after_json_on_disk() -> None:
    _, manifest = train("2", seed=2)
    stored = decode_manifest(encode_manifest(sign(manifest, HUB)))
    verify(stored, trusted(HUB))


def test_unsigned_is_refused() -> None:
    with pytest.raises(SignatureError, match="unsigned command"):
        verify(commands()[0], trusted(HUB))


@pytest.mark.parametrize(
    "change",
    [{"expires_at": WALL + 31 * 365 * 86400}, {"node": "pump-02"}, {"id": "other"}, {"to": "1"}],
    ids=["expiry", "node", "id", "rollback-target"],
)
def test_a_tampered_field_breaks_the_signature(change: dict[str, object]) -> None:
    signed = sign(commands()[1], HUB)
    with pytest.raises(SignatureError, match="bad command signature"):
        verify(msgspec.structs.replace(signed, **change), trusted(HUB))


@pytest.mark.parametrize("garbage", [bytes(64), b"\x01" * 10], ids=["zeros", "short"])
def test_a_garbage_signature_is_refused(garbage: bytes) -> None:
    forged = msgspec.structs.replace(commands()[1], signature=garbage)
    with pytest.raises(SignatureError, match="bad command signature"):
        verify(forged, trusted(HUB))


def test_a_key_the_node_does_not_trust_is_refused() -> None:
    with pytest.raises(SignatureError, match="not made by a trusted hub key"):
        verify(sign(commands()[0], OTHER), trusted(HUB))


def test_a_manifest_signature_does_not_pass_for_a_command() -> None:
    # Domain prefixes differ, so no byte string is both a valid command and manifest message.
    _, manifest = train("2", seed=2)
    assert canonical(manifest)[:20] != canonical(commands()[0])[:20]


def test_during_a_rotation_both_keys_are_accepted_then_only_the_new() -> None:
    rotation = trusted(HUB, OTHER)
    assert verify(sign(commands()[0], HUB), rotation) == rotation[0]
    assert verify(sign(commands()[0], OTHER), rotation) == rotation[1]
    with pytest.raises(SignatureError):
        verify(sign(commands()[0], HUB), trusted(OTHER))  # old key dropped after the rotation


def _deploy(manifest_key: Ed25519PrivateKey | None, **manifest_change: object) -> Deploy:
    onnx, manifest = train("2", seed=2)
    if manifest_key is not None:
        manifest = sign(manifest, manifest_key)
    manifest = msgspec.structs.replace(manifest, **manifest_change)
    return sign(deploy_command(onnx, manifest), HUB)


def test_a_deploy_needs_a_signed_manifest() -> None:
    check(_deploy(HUB), trusted(HUB), {}, WALL)
    with pytest.raises(SignatureError, match="unsigned manifest"):
        check(_deploy(None), trusted(HUB), {}, WALL)


def test_a_manifest_altered_after_signing_is_refused_even_in_a_signed_command() -> None:
    # Whoever holds the hub's broker password cannot raise the threshold of a signed model.
    with pytest.raises(SignatureError, match="bad manifest signature"):
        check(_deploy(HUB, threshold=1e9), trusted(HUB), {}, WALL)


def test_an_old_command_after_a_newer_one_is_a_replay() -> None:
    keys_ = trusted(HUB)
    kid = keys_[0].key_id
    old = sign(commands()[1], HUB)
    assert check(old, keys_, {kid: WALL + REORDER_S}, WALL) == Accepted(kid, WALL)  # within reorder
    with pytest.raises(SignatureError, match="replayed"):
        check(old, keys_, {kid: WALL + 3600}, WALL)
    check(old, keys_, {"other-key": WALL + 3600}, WALL)  # marks are per key


def test_an_expired_command_leaves_its_rejection_to_expiry_and_moves_no_mark() -> None:
    old = sign(commands()[1], HUB)
    kid = trusted(HUB)[0].key_id
    assert check(old, trusted(HUB), {kid: WALL + 3600}, now=WALL + 601) is None


def test_marks_survive_a_restart_and_only_rise(tmp_path: Path) -> None:
    path = tmp_path / "trust.json"
    marks = Marks(path)
    marks.accept(Accepted("k", 200.0))
    marks.accept(Accepted("k", 100.0))
    assert Marks(path).marks == {"k": 200.0}


def test_unreadable_marks_start_empty(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "trust.json"
    path.write_text(json.dumps({"k": "not a time"}))
    assert Marks(path).marks == {}
    assert "unreadable replay marks" in caplog.text


def test_keygen_writes_a_private_key_only_its_owner_reads(tmp_path: Path) -> None:
    key = tmp_path / "hub.key"
    text = keys.generate(key)
    assert key.stat().st_mode & 0o777 == 0o600
    assert keys.public_path(key).read_text().strip() == text
    private = keys.load(key)
    verify(sign(commands()[0], private), [parse_public_key(text)])
    with pytest.raises(keys.SigningKeyError, match="exists"):
        keys.generate(key)


def test_sign_command_signs_the_deploys_manifest_too() -> None:
    onnx, manifest = train("2", seed=2)
    signed = keys.sign_command(deploy_command(onnx, manifest), HUB)
    assert isinstance(signed, Deploy)
    check(signed, trusted(HUB), {}, WALL)


@pytest.mark.parametrize("text", ["not base64!", "AAAA"], ids=["garbage", "short"])
def test_a_bad_public_key_is_named(text: str) -> None:
    with pytest.raises(ValueError, match=r"security\.hub_keys"):
        parse_public_key(text, "security.hub_keys[0]")


def test_cloud_hub_keygen_prints_what_goes_into_each_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cloud_hub.cli.main import main

    key = tmp_path / "hub.key"
    assert main(["keygen", "--out", str(key)]) == 0
    out = capsys.readouterr().out
    public = keys.public_path(key).read_text().strip()
    assert f'hub_keys = ["{public}"]' in out and f'signing_key = "{key}"' in out
    assert main(["keygen", "--out", str(key)]) == 1  # never overwrites a key
    assert "exists" in capsys.readouterr().err


def test_a_field_added_with_its_default_changes_nothing_an_older_node_checks() -> None:
    """An older node's Rollback has no ``to``: a rollback that leaves it unset still verifies
    there; one that uses it cannot, and is refused rather than half-understood."""
    from schemas.messages import CommandBase
    from schemas.signing import canonical

    older = msgspec.defstruct("Rollback", [], bases=(CommandBase,), tag="rollback", kw_only=True)
    plain = decode("cmd", encode(SAMPLES["cmd_rollback"]))
    assert isinstance(plain, Rollback) and plain.to is None
    seen_by_older = msgspec.msgpack.decode(encode(plain), type=older)
    assert canonical(seen_by_older) == canonical(plain)  # type: ignore[arg-type]
    targeted = msgspec.structs.replace(plain, to="3")
    seen_by_older = msgspec.msgpack.decode(encode(targeted), type=older)
    assert canonical(seen_by_older) != canonical(targeted)  # type: ignore[arg-type]
