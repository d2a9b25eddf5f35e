"""Start-up with a bad initial model: it is checked before it is installed, fixing the config is
enough, and a broken manifest is one line naming the file."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cloud_hub.models.onnx_export import save_model, train_model
from cloud_hub.models.trainer import TrainConfig
from edge_node.__main__ import main
from edge_node.config import NodeConfig, load_config
from edge_node.lifecycle.model_store import ModelStore, StoreState
from edge_node.scoring.runtime import ModelError, ModelRuntime
from edge_node.sources.simulator import CHANNELS, PumpSimulator
from edge_node.wiring import open_model


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sim = PumpSimulator(seed=2, rate_hz=1.0, speed=0, wall_start=0.0, max_block=400)
    block = sim.poll(0.0)
    assert block is not None
    onnx, manifest = train_model(
        block.values, sim.channels, name="pump", version="1", trained_by="tests",
        config=TrainConfig(window=4), now=0,
    )  # fmt: skip
    folder = tmp_path_factory.mktemp("good")
    save_model(folder, onnx, manifest)
    return folder


def corrupt_copy(good: Path, where: Path) -> Path:
    shutil.copytree(good, where)
    (where / "model.onnx").write_bytes(b"not an onnx graph")
    return where


def config(tmp_path: Path, initial: Path) -> NodeConfig:
    path = tmp_path / "node.toml"
    path.write_text(
        f'[node]\nid = "n1"\ndata_dir = "{tmp_path / "data"}"\n[model]\ninitial = "{initial}"\n'
    )
    return load_config(path, {})


def load(folder: Path) -> ModelRuntime:
    return ModelRuntime.load(folder, sensors=list(CHANNELS))


def test_a_corrupt_initial_model_is_refused_before_it_becomes_active(
    tmp_path: Path, good: Path
) -> None:
    bad = corrupt_copy(good, tmp_path / "bad")
    with pytest.raises(ModelError, match=r"model\.initial"):
        open_model(config(tmp_path, bad), load)
    assert ModelStore(tmp_path / "data" / "models").state().active is None
    # Fixing the config is enough: no data folder to wipe.
    _, runtime, fallback = open_model(config(tmp_path, good), load)
    assert runtime.ref.version == "1" and fallback == ""


def test_a_corrupt_active_model_with_nothing_before_it_is_replaced_by_the_initial_one(
    tmp_path: Path, good: Path
) -> None:
    # As an earlier release left it: the corrupt copy installed and active.
    store = ModelStore(tmp_path / "data" / "models")
    ref = store.install(corrupt_copy(good, tmp_path / "bad"))
    store.restore(StoreState(ref, None))
    _, runtime, _ = open_model(config(tmp_path, good), load)
    assert runtime.ref == ref
    assert store.state().active == ref


def test_a_truncated_manifest_is_one_line_naming_the_file(
    tmp_path: Path, good: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(good, broken)
    manifest = broken / "manifest.json"
    manifest.write_bytes(manifest.read_bytes()[:200])
    config(tmp_path, broken)
    assert main(["run", "--config", str(tmp_path / "node.toml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    assert str(manifest) in err and "truncated" in err
