"""The node's model runtime: loads only models that are what their manifest says, and scores."""

from __future__ import annotations

import hashlib
from pathlib import Path

import msgspec
import numpy as np
import onnx
import pytest
from numpy.typing import NDArray
from onnx import TensorProto, helper

from cloud_hub.models.onnx_export import save_model, train_model
from cloud_hub.models.trainer import TrainConfig, fit, score_numpy, sliding_windows
from edge_node.scoring.runtime import ModelError, ModelRuntime
from schemas.manifest import Manifest, OutputSpec
from schemas.messages import ModelRef

CHANNELS = ["current", "pressure", "voltage"]
WINDOW = 6
CONFIG = TrainConfig(window=WINDOW)


def healthy(n: int, seed: int = 0) -> NDArray[np.float32]:
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 1))
    noise = 0.3 * rng.normal(size=(n, 3))
    return (np.array([2.4, 0.1, 228.0]) + (latent + noise) * [0.5, 0.25, 10.0]).astype(np.float32)


@pytest.fixture(scope="module")
def trained() -> tuple[bytes, Manifest]:
    return train_model(
        healthy(500), CHANNELS, name="pump", version="3", trained_by="test", config=CONFIG, now=0
    )


@pytest.fixture
def folder(tmp_path: Path, trained: tuple[bytes, Manifest]) -> Path:
    save_model(tmp_path, *trained)
    return tmp_path


def write(folder: Path, onnx_bytes: bytes, manifest: Manifest) -> Path:
    """Save a model with a manifest whose sha256 matches, so only the intended fault remains."""
    digest = hashlib.sha256(onnx_bytes).hexdigest()
    save_model(folder, onnx_bytes, msgspec.structs.replace(manifest, sha256=digest))
    return folder


def test_scores_equal_the_trainer_reference(folder: Path) -> None:
    runtime = ModelRuntime.load(folder, sensors=CHANNELS)
    windows = sliding_windows(healthy(300, seed=1), WINDOW)
    windows[::7, :, 1] += 3.0
    scores, contributions = runtime.score(windows)
    expected_scores, expected_contributions = score_numpy(
        fit(healthy(500), CHANNELS, CONFIG), windows
    )
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-4, atol=1e-5)
    assert contributions is not None
    np.testing.assert_allclose(contributions, expected_contributions, rtol=1e-4, atol=1e-5)
    assert runtime.ref == ModelRef("pump", "3")
    assert runtime.channels == CHANNELS and runtime.window == WINDOW


def test_chunked_scoring_equals_one_run(folder: Path) -> None:
    windows = sliding_windows(healthy(40, seed=2), WINDOW)
    whole, _ = ModelRuntime.load(folder).score(windows)
    chunked, contributions = ModelRuntime.load(folder, max_batch=4).score(windows)
    np.testing.assert_array_equal(chunked, whole)
    assert contributions is not None and contributions.shape == (len(windows), len(CHANNELS))


def test_a_fixed_batch_of_one_is_scored_row_by_row(
    tmp_path: Path, trained: tuple[bytes, Manifest]
) -> None:
    onnx_bytes, manifest = trained
    proto = onnx.load_from_string(onnx_bytes)
    for value in [*proto.graph.input, *proto.graph.output]:
        value.type.tensor_type.shape.dim[0].dim_value = 1
    fixed = proto.SerializeToString()
    single = msgspec.structs.replace(
        manifest, input=msgspec.structs.replace(manifest.input, dynamic_batch=False)
    )
    runtime = ModelRuntime.load(write(tmp_path, fixed, single))
    windows = sliding_windows(healthy(20, seed=3), WINDOW)
    scores, _ = runtime.score(windows)
    expected, _ = ModelRuntime.load(write(tmp_path / "dynamic", onnx_bytes, manifest)).score(
        windows
    )
    np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-5)


def test_empty_batch_and_wrong_window_shape(folder: Path) -> None:
    runtime = ModelRuntime.load(folder)
    scores, contributions = runtime.score(np.zeros((0, WINDOW, 3), dtype=np.float32))
    assert scores.shape == (0,)
    assert contributions is not None and contributions.shape == (0, 3)
    with pytest.raises(ValueError, match=r"expects \[n, 6, 3\]"):
        runtime.score(np.zeros((2, WINDOW + 1, 3), dtype=np.float32))


def test_rejects_a_corrupted_model_file(folder: Path) -> None:
    data = bytearray((folder / "model.onnx").read_bytes())
    data[-1] ^= 0xFF
    (folder / "model.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelError, match=r"sha256 of .*model\.onnx is \w+, manifest says"):
        ModelRuntime.load(folder)


def test_rejects_a_file_that_is_not_onnx(tmp_path: Path, trained: tuple[bytes, Manifest]) -> None:
    write(tmp_path, b"this is not an ONNX model", trained[1])
    with pytest.raises(ModelError, match="load failed"):
        ModelRuntime.load(tmp_path)


def test_rejects_a_missing_or_invalid_manifest(folder: Path) -> None:
    (folder / "manifest.json").write_bytes(b'{"name": "pump"}')
    with pytest.raises(ModelError, match=r"load failed: .*manifest\.json: invalid manifest"):
        ModelRuntime.load(folder)
    (folder / "manifest.json").unlink()
    with pytest.raises(ModelError, match=r"load failed: .*manifest\.json"):
        ModelRuntime.load(folder)


@pytest.mark.parametrize(
    ("window", "channels", "message"),
    [
        (WINDOW + 1, CHANNELS, r"shape \['batch', 6, 3\], manifest says \['batch', 7, 3\]"),
        (
            WINDOW,
            [*CHANNELS, "flow"],
            r"shape \['batch', 6, 3\], manifest says \['batch', 6, 4\]",
        ),
    ],
)
def test_rejects_a_manifest_whose_input_differs_from_the_graph(
    tmp_path: Path, trained: tuple[bytes, Manifest], window: int, channels: list[str], message: str
) -> None:
    onnx_bytes, manifest = trained
    spec = msgspec.structs.replace(manifest.input, window=window, channels=channels)
    write(tmp_path, onnx_bytes, msgspec.structs.replace(manifest, input=spec))
    with pytest.raises(ModelError, match=message):
        ModelRuntime.load(tmp_path)


def test_rejects_a_manifest_naming_a_missing_output(
    tmp_path: Path, trained: tuple[bytes, Manifest]
) -> None:
    onnx_bytes, manifest = trained
    wrong = msgspec.structs.replace(manifest, output=OutputSpec(score="anomaly"))
    write(tmp_path, onnx_bytes, wrong)
    with pytest.raises(ModelError, match="output 'anomaly' missing"):
        ModelRuntime.load(tmp_path)


def test_rejects_sensors_lacking_a_channel_the_model_needs(folder: Path) -> None:
    with pytest.raises(ModelError, match=r"needs channels \['pressure'\]"):
        ModelRuntime.load(folder, sensors=["current", "voltage", "flow"])


def test_accepts_sensors_in_another_order_or_with_extra_channels(folder: Path) -> None:
    """The node feeds the model's channels in the manifest's order, whatever the source's."""
    runtime = ModelRuntime.load(folder, sensors=["flow", "voltage", "pressure", "current"])
    assert runtime.channels == CHANNELS


def nan_model() -> bytes:
    """A valid graph of the right shape whose score is 0/0."""
    zero = helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0])
    axes = helper.make_tensor("axes", TensorProto.INT64, [2], [1, 2])
    nodes = [
        helper.make_node("ReduceSum", ["window", "axes"], ["total"], keepdims=0),
        helper.make_node("Mul", ["total", "zero"], ["nothing"]),
        helper.make_node("Div", ["nothing", "zero"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "nan",
        [helper.make_tensor_value_info("window", TensorProto.FLOAT, ["batch", WINDOW, 3])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["batch"])],
        initializer=[zero, axes],
    )
    opsets = [helper.make_opsetid("", 17)]
    model = helper.make_model(graph, opset_imports=opsets, ir_version=8)
    data: bytes = model.SerializeToString()
    return data


def test_rejects_a_model_that_scores_nan(tmp_path: Path, trained: tuple[bytes, Manifest]) -> None:
    manifest = msgspec.structs.replace(trained[1], output=OutputSpec(score="score"))
    write(tmp_path, nan_model(), manifest)
    with pytest.raises(ModelError, match="warm-up produced NaN scores"):
        ModelRuntime.load(tmp_path)
