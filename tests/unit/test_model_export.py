"""The ONNX export of every detector family, the manifest and card it gets, the int8 twin."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from numpy.typing import NDArray

from cloud_hub.models.onnx_export import build_onnx, int8_variant, save_model, train_model
from cloud_hub.models.trainer import ALGORITHMS, DEFAULTS, TrainConfig, fit, score_numpy
from cloud_hub.models.trainer import sliding_windows as windows_of
from schemas.alarm import AlarmSpec
from schemas.manifest import Validation, decode_manifest, encode_manifest
from tests.unit.test_trainer import CHANNELS, healthy


def onnx_scores(onnx_bytes: bytes, windows: NDArray[np.float32]) -> list[NDArray[np.float32]]:
    session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    result: list[NDArray[np.float32]] = session.run(["score", "contributions"], {"window": windows})
    return result


@pytest.mark.parametrize("opset", [17, 18])
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_onnx_graph_scores_like_numpy(algorithm: str, opset: int) -> None:
    model = fit(healthy(600), CHANNELS, DEFAULTS[algorithm])  # type: ignore[index]
    normal = windows_of(healthy(200, seed=1), model.window)
    broken = normal.copy()
    broken[:, :, 1] += 2.0  # pressure off its correlation with the others
    windows = np.concatenate([normal, broken])
    scores, contributions = onnx_scores(build_onnx(model, opset=opset), windows)
    expected_scores, expected_contributions = score_numpy(model, windows)
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(contributions, expected_contributions, rtol=1e-3, atol=1e-4)


def test_train_model_manifest_describes_the_onnx_bytes_and_carries_a_card() -> None:
    values = healthy(600)
    config = TrainConfig(window=8, alarm=AlarmSpec(open_after=2, open_within=3, close_after=5))
    checked = Validation(protocol="p", files=2, readings=100, f1=0.9, far=0.05, mar=0.1)
    onnx_bytes, manifest = train_model(
        values,
        CHANNELS,
        name="pump",
        version="7",
        trained_by="test",
        config=config,
        now=1.5e9,
        sources=["a.csv"],
        period_s=1.0,
        validation=checked,
    )
    assert manifest.sha256 == hashlib.sha256(onnx_bytes).hexdigest()
    assert manifest.input.channels == CHANNELS
    assert manifest.input.window == 8
    assert manifest.algorithm == "pca"
    assert manifest.alarm == config.alarm
    assert manifest.threshold == pytest.approx(fit(values, CHANNELS, config).threshold)
    assert manifest.resources.size_bytes == len(onnx_bytes)
    assert manifest.resources.opset == 17
    assert 0 < manifest.resources.latency_ms_p50 <= manifest.resources.latency_ms_p99
    card = manifest.card
    assert card is not None
    assert card.validation == checked
    assert card.training.readings == 600 and card.training.sources == ["a.csv"]
    assert card.size_bytes == len(onnx_bytes)
    assert card.latency_us_per_reading > 0
    assert "spread(current)" in card.features
    assert "held-out" not in card.threshold_rule and "last 30%" in card.threshold_rule
    assert decode_manifest(encode_manifest(manifest)) == manifest


def test_a_manifest_from_before_alarm_rules_and_cards_still_loads() -> None:
    _, manifest = train_model(
        healthy(600), CHANNELS, name="p", version="1", trained_by="t", config=TrainConfig(), now=0
    )
    old = json.loads(encode_manifest(manifest))
    del old["alarm"], old["card"]
    loaded = decode_manifest(json.dumps(old).encode())
    assert loaded.alarm == AlarmSpec() and loaded.card is None


def test_int8_twin_scores_close_to_fp32_and_describes_itself() -> None:
    values = healthy(600)
    onnx_bytes, manifest = train_model(
        values, CHANNELS, name="p", version="3", trained_by="t", config=TrainConfig(), now=0
    )
    quantized, twin = int8_variant(onnx_bytes, manifest)
    assert twin.version == "3-int8"
    assert twin.sha256 == hashlib.sha256(quantized).hexdigest()
    assert twin.card is not None and twin.card.precision == "int8"
    assert twin.card.size_bytes == len(quantized)
    assert twin.threshold == manifest.threshold
    windows = windows_of(healthy(400, seed=9), 16)
    windows[200:, :, 1] += 2.0
    full, _ = onnx_scores(onnx_bytes, windows)
    small, _ = onnx_scores(quantized, windows)
    agree = (full > manifest.threshold) == (small > manifest.threshold)
    assert agree.mean() > 0.98


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
