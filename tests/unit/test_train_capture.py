"""``cloud-hub train --capture ID``: a model from a capture that arrived after its command
gave up, read from where ``cloud-hub serve`` keeps it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cloud_hub.cli import session as session_module
from cloud_hub.cli.main import main
from cloud_hub.models.capture_store import CaptureStore
from cloud_hub.models.catalog import Catalog
from schemas.messages import Capture
from schemas.packing import pack_f32

T0 = 1_800_000_000.0


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("CLOUD_HUB_CONFIG", raising=False)
    monkeypatch.setattr(session_module, "SYSTEM_CONFIG", tmp_path / "no-hub.toml")
    db = tmp_path / "hub" / "hub.db"
    monkeypatch.setenv("CLOUD_HUB__STORE__DB", str(db))
    return db.parent


def chunks(command: str, values: np.ndarray, parts: int = 3) -> list[Capture]:
    pieces = np.array_split(values.astype(np.float32), parts)
    return [
        Capture(
            node="pump-1",
            boot="b",
            seq=i,
            ts=T0,
            command=command,
            chunk=i,
            chunks=parts,
            channels=["a", "b", "c"],
            t0=T0 + i,
            period=0.1,
            n=len(rows),
            data=pack_f32(rows),
        )
        for i, rows in enumerate(pieces)
    ]


def readings(n: int) -> np.ndarray:
    rng = np.random.default_rng(11)
    base = rng.normal(size=(n, 2)) @ np.array([[1.0, 0.5, 0.2], [0.0, 0.8, -0.4]])
    noisy: np.ndarray = base + 0.1 * rng.normal(size=(n, 3)) + np.array([5.0, 1.0, 20.0])
    return noisy


def test_a_late_capture_is_trained_and_registered(
    hub: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = CaptureStore(hub / "captures")
    for chunk in chunks("c0ffee000001", readings(400)):
        store.on_capture(chunk, T0)
    assert main(["train", "--capture", "c0ffee000001", "--name", "pump-pca", "--register"]) == 0
    assert "registered  pump-pca@1" in capsys.readouterr().out
    catalog = Catalog(hub / "models")
    try:
        entry = catalog.get("pump-pca", "1")
        reference = catalog.reference("pump-pca", "1")
    finally:
        catalog.close()
    assert entry is not None and entry.channels == ["a", "b", "c"]
    assert "c0ffee000001" in entry.trained_by and "pump-1" in entry.trained_by
    # What it learned is kept as its healthy reference, for the retrain loop's checks.
    assert reference is not None and reference.period == pytest.approx(0.1)
    np.testing.assert_allclose(reference.values, readings(400), rtol=1e-6)


def test_a_capture_can_be_written_to_a_folder(
    hub: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = CaptureStore(hub / "captures")
    for chunk in chunks("c0ffee000002", readings(400)):
        store.on_capture(chunk, T0)
    out = tmp_path / "out"
    argv = ["train", "--capture", "c0ffee000002", "--name", "m", "--version", "3", "--out"]
    assert main([*argv, str(out)]) == 0
    assert (out / "model.onnx").exists() and (out / "manifest.json").exists()


def test_an_incomplete_or_unknown_capture_says_so(
    hub: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    store = CaptureStore(hub / "captures")
    first, *_ = chunks("c0ffee000003", readings(400))
    store.on_capture(first, T0)
    argv = ["train", "--name", "m", "--register", "--capture"]
    assert main([*argv, "c0ffee000003"]) == 2
    assert "capture c0ffee000003 is incomplete: 1 chunks arrived" in capsys.readouterr().err
    assert main([*argv, "feedfeed0000"]) == 2
    err = capsys.readouterr().err
    assert "no capture feedfeed0000" in err and "c0ffee000003" in err
    with pytest.raises(SystemExit) as stopped:  # an id is never a path
        main([*argv, "../etc"])
    assert stopped.value.code == 2


def test_train_needs_an_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--capture", "c0ffee000004", "--name", "m", "--version", "1"]) == 2
    assert "--out DIR is required" in capsys.readouterr().err
