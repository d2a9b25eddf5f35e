"""The node's model store: install, atomic switches through a bounded history, crash leftovers."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import msgspec
import pytest

from edge_node.lifecycle.model_store import (
    HISTORY_LIMIT,
    ModelStore,
    StoreError,
    StoreState,
    with_history,
)
from schemas.manifest import Manifest, decode_manifest, encode_manifest
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
    with pytest.raises(StoreError, match=r"manifest\.json.*\$\.name"):
        ModelStore(tmp_path / "store").install(folder)


def _manifest_for(model: bytes, version: str) -> Manifest:
    return msgspec.structs.replace(
        MANIFEST, version=version, sha256=hashlib.sha256(model).hexdigest()
    )


def test_install_bytes_writes_a_complete_version(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    ref = store.install_bytes(_manifest_for(b"weights-5", "5"), b"weights-5")
    assert ref == ModelRef("pump-pca", "5")
    assert (store.path(ref) / "model.onnx").read_bytes() == b"weights-5"
    assert decode_manifest((store.path(ref) / "manifest.json").read_bytes()).version == "5"
    assert not [p for p in store.path(ref).parent.iterdir() if p.name.startswith(".")]


def test_install_bytes_refuses_bytes_that_are_not_the_manifests(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    with pytest.raises(StoreError, match="sha256"):
        store.install_bytes(_manifest_for(b"weights-5", "5"), b"weights-X")
    assert store.versions() == []


def test_install_bytes_replaces_a_corrupt_copy_and_keeps_a_good_one(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    manifest = _manifest_for(b"weights-5", "5")
    ref = store.install_bytes(manifest, b"weights-5")
    (store.path(ref) / "model.onnx").write_bytes(b"bit rot")
    store.install_bytes(manifest, b"weights-5")
    assert (store.path(ref) / "model.onnx").read_bytes() == b"weights-5"
    mtime = (store.path(ref) / "model.onnx").stat().st_mtime_ns
    store.install_bytes(manifest, b"weights-5")
    assert (store.path(ref) / "model.onnx").stat().st_mtime_ns == mtime


def test_a_crash_between_install_and_activate_keeps_the_old_model(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    v1 = store.install(_model_dir(tmp_path, "1"))
    store.activate(v1)
    store.install_bytes(_manifest_for(b"weights-2", "2"), b"weights-2")
    # ... the process dies here, before activate ...
    restarted = ModelStore(tmp_path / "store")
    assert restarted.state() == StoreState(v1, None)


def test_rollbacks_walk_back_through_the_history(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    v1, v2, v3 = (store.install(_model_dir(tmp_path, v)) for v in "123")
    with pytest.raises(StoreError, match="no previous model"):
        store.rollback()
    for ref in (v1, v2, v3):
        store.activate(ref)
    assert store.state().history == (v1, v2)
    assert store.rollback() == StoreState(v2, v1)
    assert ModelStore(tmp_path / "store").state() == StoreState(v2, v1), "kept on disk"
    assert store.rollback() == StoreState(v1, None), "further back, not forth to 3"
    with pytest.raises(StoreError, match="no previous model"):
        store.rollback()
    # A version rolled back from is still installed: --to goes forth to it like a deploy.
    assert store.rollback(to=v3) == StoreState(v3, v1)
    with pytest.raises(StoreError, match="already active"):
        store.rollback(to=v3)
    with pytest.raises(StoreError, match="not installed"):
        store.rollback(to=ModelRef("pump-pca", "9"))


def test_rollback_to_a_version_in_the_history_drops_what_came_after(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    refs = [store.install(_model_dir(tmp_path, v)) for v in "1234"]
    for ref in refs:
        store.activate(ref)
    assert store.rollback(to=refs[1]) == StoreState(refs[1], refs[0])


def test_history_is_bounded_and_keeps_each_version_once(tmp_path: Path) -> None:
    refs = [ModelRef("m", str(i)) for i in range(1, 10)]
    state = with_history(refs[-1], [*refs[:-1], refs[0]])
    assert len(state.history) == HISTORY_LIMIT
    assert state.history[-1] == refs[0], "a version re-activated keeps its newest place"
    assert refs[-1] not in state.history


def test_a_state_written_before_the_history_is_read_as_previous_only(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    v1, v2 = (store.install(_model_dir(tmp_path, v)) for v in "12")
    body = '{"active": {"name": "pump-pca", "version": "2"}, '
    body += '"previous": {"name": "pump-pca", "version": "1"}}'
    (tmp_path / "store" / "state.json").write_text(body)
    assert store.state() == StoreState(v2, v1)
    assert store.rollback() == StoreState(v1, None)


def test_restore_writes_an_earlier_state_of_installed_versions_only(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    v1 = store.install(_model_dir(tmp_path, "1"))
    assert store.restore(StoreState(v1, None)) == StoreState(v1, None)
    with pytest.raises(StoreError, match="not installed"):
        store.restore(StoreState(v1, ModelRef("pump-pca", "9")))
    assert store.state() == StoreState(v1, None)


def test_prune_keeps_the_history_and_the_newest_others(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    refs = []
    for i in range(1, 7):
        ref = store.install_bytes(_manifest_for(b"w%d" % i, str(i)), b"w%d" % i)
        os.utime(store.path(ref), (1000.0 + i, 1000.0 + i))  # installed in this order
        refs.append(ref)
    store.activate(refs[0])
    store.activate(refs[1])
    store.activate(refs[3])  # active 4, history 1, 2
    pruned = store.prune(keep=1)
    assert pruned == [refs[2], refs[4]]
    assert set(store.versions()) == {refs[0], refs[1], refs[3], refs[5]}


def test_clean_removes_what_a_crash_left_behind(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "store")
    v1 = store.install(_model_dir(tmp_path, "1"))
    store.activate(v1)
    half = store.root / "versions" / "pump-pca" / ".incoming-crashed"
    half.mkdir()
    (half / "model.onnx").write_bytes(b"half")
    (store.root / ".state-crashed").write_text("{half")
    assert store.clean() == 2
    assert not half.exists() and not (store.root / ".state-crashed").exists()
    assert store.state().active == v1 and store.versions() == [v1]
