"""Model files encrypted at rest in the node's store (edge_node/lifecycle/sealing.py)."""

from __future__ import annotations

import base64
import os
from functools import partial
from pathlib import Path

import pytest

from cloud_hub.models.onnx_export import save_model
from edge_node.lifecycle.model_store import ModelStore
from edge_node.lifecycle.sealing import MAGIC, ModelSeal, SealError, read_key
from edge_node.lifecycle.switcher import open_active
from edge_node.scoring.runtime import ModelError, ModelRuntime
from schemas.manifest import MODEL_FILE
from schemas.messages import ModelRef
from tests.unit.control_harness import SOURCE, train

V1, V2 = ModelRef("pump", "1"), ModelRef("pump", "2")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("models")
    out = {}
    for version in ("1", "2"):
        save_model(root / version, *train(version, seed=int(version)))
        out[version] = root / version
    return out


def _store(root: Path, seal: ModelSeal, folders: dict[str, Path]) -> ModelStore:
    store = ModelStore(root, seal)
    for version in ("1", "2"):
        store.activate(store.install(folders[version]))
    return store


def _load(seal: ModelSeal | None) -> partial[ModelRuntime]:
    return partial(ModelRuntime.load, sensors=SOURCE, opener=seal.open if seal else None)


def test_a_sealed_model_is_not_readable_on_disk_and_loads(
    tmp_path: Path, folders: dict[str, Path]
) -> None:
    seal = ModelSeal(os.urandom(32))
    store = _store(tmp_path, seal, folders)
    plain = (folders["2"] / MODEL_FILE).read_bytes()
    on_disk = (store.path(V2) / MODEL_FILE).read_bytes()
    assert on_disk.startswith(MAGIC) and plain[64:128] not in on_disk
    assert _load(seal)(store.path(V2)).ref == V2


@pytest.mark.parametrize("attack", ["flip", "other-key", "plain", "swap"])
def test_an_unopenable_model_is_refused_and_the_node_keeps_the_previous(
    tmp_path: Path, folders: dict[str, Path], attack: str
) -> None:
    seal = ModelSeal(os.urandom(32))
    store = _store(tmp_path, seal, folders)
    target = store.path(V2) / MODEL_FILE
    if attack == "flip":
        data = bytearray(target.read_bytes())
        data[-40] ^= 0x01
        target.write_bytes(bytes(data))
    elif attack == "other-key":
        target.write_bytes(ModelSeal(os.urandom(32)).seal(b"x" * 100, target.parent))
    elif attack == "plain":
        target.write_bytes((folders["2"] / MODEL_FILE).read_bytes())
    else:  # version 1's sealed file put in version 2's place
        target.write_bytes((store.path(V1) / MODEL_FILE).read_bytes())
    with pytest.raises(ModelError, match=r"cannot decrypt|not encrypted"):
        _load(seal)(store.path(V2))
    scorer, problem = open_active(store, _load(seal))
    assert scorer.ref == V1 and "pump@2" in problem and "fell back to pump@1" in problem


def test_models_written_in_the_clear_are_sealed_when_a_key_is_set(
    tmp_path: Path, folders: dict[str, Path]
) -> None:
    plain = ModelStore(tmp_path)
    plain.activate(plain.install(folders["1"]))
    seal = ModelSeal(os.urandom(32))
    store = ModelStore(tmp_path, seal)
    assert store.seal_plain() == [V1]
    assert store.seal_plain() == []
    assert _load(seal)(store.path(V1)).ref == V1


def test_the_key_file_is_checked(tmp_path: Path) -> None:
    path = tmp_path / "model.key"
    path.write_text(base64.b64encode(os.urandom(32)).decode() + "\n")
    assert len(read_key(path)) == 32
    path.write_text(base64.b64encode(os.urandom(16)).decode())
    with pytest.raises(SealError, match="16 bytes"):
        read_key(path)
    with pytest.raises(SealError, match="cannot read"):
        read_key(tmp_path / "missing.key")
