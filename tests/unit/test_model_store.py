"""The node's model store: install, atomic active/previous switch, crash leftovers."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from edge_node.model_store import ModelStore, StoreError
from schemas.manifest import encode_manifest
from schemas.messages import ModelRef
from schemas.samples import MANIFEST


def _model_dir(tmp_path: Path, version: str) -> Path:
    folder = tmp_path / f"src-{version}"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"onnx-" + version.encode())
    (folder / "manifest.json").write_bytes(
        encode_manifest(msgspec.structs.replace(MANIFEST, version=version))
    )
    return folder


def test_new_store_has_no_active_model(tmp_path: Path) -> None:
    state = ModelStore(tmp_path / "store").state()
    assert state.active is None and state.previous is None


def test_activate_keeps_the_previous_version(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    v1 = store.install(_model_dir(tmp_path, "1"))
    v2 = store.install(_model_dir(tmp_path, "2"))
    store.activate(v1)
    state = store.activate(v2)
    assert (state.active, state.previous) == (v2, v1)
    assert ModelStore(tmp_path / "store").state() == state
    assert (store.path(v2) / "model.onnx").read_bytes() == b"onnx-2"


def test_reactivating_the_active_version_keeps_previous(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    v1, v2 = (store.install(_model_dir(tmp_path, v)) for v in "12")
    store.activate(v1)
    store.activate(v2)
    assert store.activate(v2).previous == v1


def test_activating_a_missing_version_is_refused(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    with pytest.raises(StoreError, match="not installed"):
        store.activate(ModelRef("pump-pca", "9"))


def test_leftover_temporary_folders_do_not_count(tmp_path: Path) -> None:
    """A crash mid-install leaves only a hidden temporary folder; the active model stays."""
    store = ModelStore(tmp_path / "store")
    v1 = store.install(_model_dir(tmp_path, "1"))
    store.activate(v1)
    (store.root / "versions" / "pump-pca" / ".incoming-crashed").mkdir()
    (store.root / ".state-crashed").write_text("{half")
    assert ModelStore(tmp_path / "store").state().active == v1


def test_bad_manifest_is_named(tmp_path: Path) -> None:
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "manifest.json").write_text('{"name": 3}')
    with pytest.raises(ValueError, match=r"manifest\.json"):
        ModelStore(tmp_path / "store").install(folder)
