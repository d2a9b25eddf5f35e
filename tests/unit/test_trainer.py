"""The PCA trainer, its ONNX export and the model folder it writes."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from numpy.typing import NDArray

from cloud_hub.models.onnx_export import build_onnx, save_model, train_model
from cloud_hub.models.trainer import (
    FittedModel,
    TrainConfig,
    fit,
    profile,
    reference_profile,
    score_numpy,
    sliding_windows,
)
from schemas.manifest import decode_manifest, encode_manifest
from tests.skab import skab_file

CHANNELS = ["current", "pressure", "voltage", "vibration"]


def healthy(n: int, seed: int = 0) -> NDArray[np.float32]:
    """Correlated readings at realistic levels: two latent factors drive four sensors."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 2))
    mixing = np.array([[1.0, 0.5, 0.0, 0.8], [0.0, 0.7, 1.0, -0.3]])
    noise = 0.2 * rng.normal(size=(n, 4))
    level = np.array([2.4, 0.1, 228.0, 0.02])
    spread = np.array([0.5, 0.25, 10.0, 0.001])
    readings: NDArray[np.float32] = ((latent @ mixing + noise) * spread + level).astype(np.float32)
    return readings


def onnx_scores(onnx_bytes: bytes, windows: NDArray[np.float32]) -> list[NDArray[np.float32]]:
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    result: list[NDArray[np.float32]] = session.run(["score", "contributions"], {"window": windows})
    return result


@pytest.fixture(scope="module")
def model() -> FittedModel:
    return fit(healthy(600), CHANNELS, TrainConfig())


def test_windows_are_consecutive_rows() -> None:
    values = np.arange(12, dtype=np.float32).reshape(6, 2)
    windows = sliding_windows(values, 4)
    assert windows.shape == (3, 4, 2)
    np.testing.assert_array_equal(windows[1], values[1:5])


@pytest.mark.parametrize("opset", [17, 18])
def test_onnx_graph_scores_like_numpy(model: FittedModel, opset: int) -> None:
    normal = sliding_windows(healthy(200, seed=1), model.window)
    broken = normal.copy()
    broken[:, :, 1] += 2.0  # pressure off its correlation with the others
    windows = np.concatenate([normal, broken])
    scores, contributions = onnx_scores(build_onnx(model, opset=opset), windows)
    expected_scores, expected_contributions = score_numpy(model, windows)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(contributions, expected_contributions, rtol=1e-4, atol=1e-5)


def test_contributions_are_non_negative_and_add_up_to_the_score(model: FittedModel) -> None:
    windows = sliding_windows(healthy(100, seed=2), model.window)
    windows[:, :, 2] -= 30.0
    scores, contributions = score_numpy(model, windows)
    assert contributions.min() >= 0.0
    np.testing.assert_allclose(contributions.sum(axis=1), scores, rtol=1e-5)
    assert np.all(contributions.argmax(axis=1) == 2)  # the shifted channel drives the score


def test_threshold_is_the_training_quantile_times_the_margin() -> None:
    values = healthy(1000, seed=3)
    plain = fit(values, CHANNELS, TrainConfig(threshold_quantile=0.95, threshold_margin=1.0))
    scores, _ = score_numpy(plain, sliding_windows(values, plain.window))
    above = float(np.mean(scores > plain.threshold))
    assert above == pytest.approx(0.05, abs=2 / len(scores))
    doubled = fit(values, CHANNELS, TrainConfig(threshold_quantile=0.95, threshold_margin=2.0))
    assert doubled.threshold == pytest.approx(2 * plain.threshold, rel=1e-6)


def test_default_threshold_rarely_flags_new_healthy_readings(model: FittedModel) -> None:
    scores, _ = score_numpy(model, sliding_windows(healthy(5000, seed=4), model.window))
    assert np.mean(scores > model.threshold) < 0.01


def test_components_as_count_and_fraction() -> None:
    values = healthy(600)
    assert fit(values, CHANNELS, TrainConfig(components=1)).components == 1
    two = fit(values, CHANNELS, TrainConfig(components=0.8))
    assert two.components == 2  # two latent factors explain most of the variance
    assert two.explained_variance >= 0.8


@pytest.mark.parametrize(
    ("values", "channels", "message"),
    [
        (healthy(20), CHANNELS, "too few training rows: 20"),
        (healthy(600)[:, :3], CHANNELS, "3 columns, 4 channels"),
        (healthy(600), ["a", "b", "a", "c"], "channel names repeat"),
        (healthy(600)[:, 0], CHANNELS, r"must be \[n, C\]"),
    ],
)
def test_fit_rejects_unusable_shapes(
    values: NDArray[np.float32], channels: list[str], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        fit(values, channels, TrainConfig())


def test_fit_rejects_missing_readings_naming_row_and_channel() -> None:
    values = healthy(600)
    values[123, 2] = np.nan
    with pytest.raises(ValueError, match="first at row 123, channel 'voltage'"):
        fit(values, CHANNELS, TrainConfig())


def test_fit_rejects_a_constant_channel_by_name() -> None:
    values = healthy(600)
    values[:, 1] = 0.054711
    with pytest.raises(ValueError, match=r"\['pressure'\] are constant"):
        fit(values, CHANNELS, TrainConfig())


@pytest.mark.parametrize(
    "config",
    [
        {"window": 0},
        {"components": 1.5},
        {"components": 0},
        {"threshold_quantile": 1.0},
        {"threshold_margin": 0.0},
    ],
)
def test_config_rejects_out_of_range_values(config: dict[str, float]) -> None:
    field = next(iter(config))
    with pytest.raises(ValueError, match=field):
        TrainConfig(**config)  # type: ignore[arg-type]


def test_reference_profile_bins_cover_the_data() -> None:
    values = healthy(500)
    values[:, 3] = np.round(values[:, 3], 3)  # a coarsely quantised channel has tied quantiles
    scores = np.linspace(0.0, 5.0, 100)
    ref = reference_profile(values, scores, CHANNELS, bins=10)
    assert sorted(ref.channels) == sorted(CHANNELS)
    for i, name in enumerate(CHANNELS):
        prof = ref.channels[name]
        assert len(prof.edges) == len(prof.fractions) + 1
        assert np.all(np.diff(prof.edges) > 0)
        assert sum(prof.fractions) == pytest.approx(1.0)
        assert prof.mean == pytest.approx(float(values[:, i].astype(np.float64).mean()))
        assert prof.std == pytest.approx(float(values[:, i].astype(np.float64).std()))
    assert len(ref.score.fractions) == 10
    assert ref.score.fractions == pytest.approx([0.1] * 10)


def test_profile_of_a_constant_sample_is_one_bin() -> None:
    prof = profile(np.full(50, 3.0))
    assert prof.fractions == [1.0]
    assert prof.edges[0] < 3.0 < prof.edges[1]


def test_train_model_manifest_describes_the_onnx_bytes() -> None:
    values = healthy(600)
    config = TrainConfig(window=4)
    onnx_bytes, manifest = train_model(
        values, CHANNELS, name="pump", version="7", trained_by="test", config=config, now=1.5e9
    )
    assert manifest.sha256 == hashlib.sha256(onnx_bytes).hexdigest()
    assert manifest.input.channels == CHANNELS
    assert manifest.input.window == 4
    assert manifest.created_at == 1.5e9
    assert manifest.threshold == pytest.approx(fit(values, CHANNELS, config).threshold)
    assert manifest.resources.size_bytes == len(onnx_bytes)
    assert manifest.resources.opset == 17
    assert 0 < manifest.resources.latency_ms_p50 <= manifest.resources.latency_ms_p99
    assert manifest.resources.memory_mb > 0
    assert decode_manifest(encode_manifest(manifest)) == manifest


def test_save_model_writes_both_files_and_no_temporaries(tmp_path: Path) -> None:
    onnx_bytes, manifest = train_model(
        healthy(600),
        CHANNELS,
        name="pump",
        version="1",
        trained_by="t",
        config=TrainConfig(),
        now=0,
    )
    folder = tmp_path / "pump" / "1"
    save_model(folder, onnx_bytes, manifest)
    save_model(folder, onnx_bytes, manifest)  # overwriting is fine
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "model.onnx"]
    assert (folder / "model.onnx").read_bytes() == onnx_bytes
    assert decode_manifest((folder / "manifest.json").read_bytes()) == manifest


def _skab(relative: str) -> tuple[list[str], NDArray[np.float32], NDArray[np.bool_] | None]:
    from schemas.readings_csv import read_csv

    data = read_csv(skab_file(relative))
    return data.channels, data.values, data.anomaly


def _flagged(model: FittedModel, values: NDArray[np.float32]) -> NDArray[np.bool_]:
    scores, _ = score_numpy(model, sliding_windows(values, model.window))
    flags: NDArray[np.bool_] = scores > model.threshold
    return flags


def test_skab_healthy_readings_from_the_fitted_period_are_rarely_flagged() -> None:
    # The pump's temperatures and flow drift for hours, so a model fitted on minutes of data
    # flags later healthy readings (see bench/skab_f1.py). Held-out blocks interleaved with the
    # fitted ones isolate what the threshold promises: few alarms within the healthy regime.
    channels, values, _ = _skab("anomaly-free/anomaly-free.csv")
    blocks = [values[i : i + 200] for i in range(0, len(values) - 199, 200)]
    model = fit(np.concatenate(blocks[0::2]), channels, TrainConfig())
    flagged = np.concatenate([_flagged(model, block) for block in blocks[1::2]])
    assert flagged.mean() < 0.05


def test_skab_valve_closure_is_flagged_more_than_normal_operation() -> None:
    channels, values, anomaly = _skab("valve1/1.csv")
    assert anomaly is not None
    model = fit(values[:400], channels, TrainConfig())
    flags = _flagged(model, values[400 - model.window + 1 :])
    labels = anomaly[400:]
    assert flags[labels].mean() > flags[~labels].mean()
