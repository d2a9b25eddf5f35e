"""The model catalog: registration, idempotence, refusals, versions and artifact bytes."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from cloud_hub.models.catalog import Catalog, CatalogError, UnknownModel
from schemas.manifest import encode_manifest
from schemas.samples import MANIFEST

NOW = 1_800_000_000.0


def model_folder(
    root: Path, version: str, data: bytes, *, name: str = "pump-pca", sha256: str | None = None
) -> Path:
    """A model folder as ``cloud-hub train`` writes it (the bytes need not be real ONNX)."""
    folder = root / f"{name}-{version}-{hashlib.sha256(data).hexdigest()[:8]}"
    folder.mkdir(parents=True)
    manifest = msgspec.structs.replace(
        MANIFEST,
        name=name,
        version=version,
        sha256=sha256 or hashlib.sha256(data).hexdigest(),
    )
    (folder / "model.onnx").write_bytes(data)
    (folder / "manifest.json").write_bytes(encode_manifest(manifest))
    return folder


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    catalog = Catalog(tmp_path / "models")
    yield catalog
    catalog.close()


def test_register_copies_the_artifact_and_describes_it(catalog: Catalog, tmp_path: Path) -> None:
    data = b"onnx bytes v1" * 100
    entry = catalog.register(model_folder(tmp_path / "src", "1", data), NOW)
    assert entry.ref == "pump-pca@1"
    assert entry.size == len(data)
    assert entry.sha256 == hashlib.sha256(data).hexdigest()
    assert entry.channels == MANIFEST.input.channels
    assert entry.threshold == MANIFEST.threshold
    assert entry.registered_at == NOW
    stored = catalog.root / "pump-pca" / "1"
    assert (stored / "model.onnx").read_bytes() == data
    assert not list(catalog.root.glob(".incoming-*")), "staging folders must not remain"
    assert catalog.get("pump-pca", "1") == entry
    assert catalog.artifact("pump-pca", "1") == data


def test_a_second_connection_sees_the_entry(catalog: Catalog, tmp_path: Path) -> None:
    entry = catalog.register(model_folder(tmp_path / "src", "1", b"abc"), NOW)
    other = Catalog(catalog.root)
    try:
        assert other.get("pump-pca", "1") == entry
        assert other.artifact("pump-pca", "1") == b"abc"
    finally:
        other.close()


def test_registering_the_same_artifact_again_is_a_no_op(catalog: Catalog, tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "src", "1", b"same")
    first = catalog.register(folder, NOW)
    again = catalog.register(folder, NOW + 60)
    assert again == first  # registered_at included: the first registration stands
    assert len(catalog.list()) == 1


def test_a_different_artifact_under_a_taken_version_is_refused(
    catalog: Catalog, tmp_path: Path
) -> None:
    catalog.register(model_folder(tmp_path / "a", "1", b"first"), NOW)
    with pytest.raises(CatalogError, match=r"pump-pca@1 is already registered"):
        catalog.register(model_folder(tmp_path / "b", "1", b"second"), NOW)
    assert catalog.artifact("pump-pca", "1") == b"first"


def test_a_manifest_whose_sha256_differs_from_the_file_is_refused(
    catalog: Catalog, tmp_path: Path
) -> None:
    folder = model_folder(tmp_path / "src", "1", b"real", sha256="0" * 64)
    with pytest.raises(CatalogError, match=r"sha256 of model\.onnx") as err:
        catalog.register(folder, NOW)
    assert str(folder) in str(err.value)
    assert catalog.list() == []
    assert not (catalog.root / "pump-pca").exists()


def test_missing_files_and_bad_manifests_name_the_file(catalog: Catalog, tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "src", "1", b"x")
    (folder / "manifest.json").write_text('{"name": "pump-pca"}')
    with pytest.raises(CatalogError, match=r"manifest\.json"):
        catalog.register(folder, NOW)
    (folder / "model.onnx").unlink()
    with pytest.raises(CatalogError, match=r"model\.onnx"):
        catalog.register(folder, NOW)


def test_names_that_are_not_safe_paths_are_refused(catalog: Catalog, tmp_path: Path) -> None:
    folder = model_folder(tmp_path / "src", "1", b"x")
    manifest = msgspec.structs.replace(
        MANIFEST, version="../1", sha256=hashlib.sha256(b"x").hexdigest()
    )
    (folder / "manifest.json").write_bytes(encode_manifest(manifest))
    with pytest.raises(CatalogError, match="model version"):
        catalog.register(folder, NOW)


def test_next_version_is_one_above_the_highest_integer(catalog: Catalog, tmp_path: Path) -> None:
    assert catalog.next_version("pump-pca") == "1"
    for version in ("2", "10", "9", "beta"):
        catalog.register(model_folder(tmp_path / "src", version, version.encode()), NOW)
    catalog.register(model_folder(tmp_path / "src", "1", b"x", name="other"), NOW)
    assert catalog.next_version("pump-pca") == "11"
    assert catalog.next_version("other") == "2"
    assert catalog.next_version("new") == "1"
    latest = catalog.latest("pump-pca")
    assert latest is not None and latest.version == "10"
    assert catalog.latest("new") is None
    assert [e.ref for e in catalog.list()] == [
        "other@1",
        "pump-pca@beta",
        "pump-pca@2",
        "pump-pca@9",
        "pump-pca@10",
    ]


def test_artifact_of_an_unknown_model_raises_unknown_model(catalog: Catalog) -> None:
    with pytest.raises(UnknownModel, match="nope@1"):
        catalog.artifact("nope", "1")
    assert catalog.get("nope", "1") is None


def test_a_damaged_artifact_is_not_served(catalog: Catalog, tmp_path: Path) -> None:
    catalog.register(model_folder(tmp_path / "src", "1", b"good"), NOW)
    (catalog.root / "pump-pca" / "1" / "model.onnx").write_bytes(b"evil")
    with pytest.raises(CatalogError, match="no longer matches"):
        catalog.artifact("pump-pca", "1")


def test_a_leftover_folder_without_a_row_is_replaced(catalog: Catalog, tmp_path: Path) -> None:
    # As left by a registration that died between its rename and its insert.
    leftover = catalog.root / "pump-pca" / "1"
    leftover.mkdir(parents=True)
    (leftover / "model.onnx").write_bytes(b"partial")
    catalog.register(model_folder(tmp_path / "src", "1", b"complete"), NOW)
    assert catalog.artifact("pump-pca", "1") == b"complete"
