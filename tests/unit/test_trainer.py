"""The trainer: drift-robust features, detector families, out-of-sample thresholds."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from cloud_hub.models.reference import profile, reference_profile
from cloud_hub.models.trainer import (
    ALGORITHMS,
    DEFAULTS,
    FittedModel,
    TrainConfig,
    fit,
    score_numpy,
    sliding_windows,
)
from schemas.alarm import apply
from schemas.readings_csv import read_csv
from tests.skab import skab_file

CHANNELS = ["current", "pressure", "voltage", "vibration"]


def healthy(n: int, seed: int = 0, drift_per_reading: float = 0.0) -> NDArray[np.float32]:
    """Correlated readings at realistic levels: two latent factors drive four sensors; with
    ``drift_per_reading`` the voltage level wanders up slowly, as temperatures do."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 2))
    mixing = np.array([[1.0, 0.5, 0.0, 0.8], [0.0, 0.7, 1.0, -0.3]])
    noise = 0.2 * rng.normal(size=(n, 4))
    level = np.array([2.4, 0.1, 228.0, 0.02])
    spread = np.array([0.5, 0.25, 10.0, 0.001])
    readings = (latent @ mixing + noise) * spread + level
    readings[:, 2] += drift_per_reading * np.arange(n)
    out: NDArray[np.float32] = readings.astype(np.float32)
    return out


@pytest.fixture(scope="module", params=ALGORITHMS)
def model(request: pytest.FixtureRequest) -> FittedModel:
    return fit(healthy(600), CHANNELS, DEFAULTS[request.param])


def test_windows_are_consecutive_rows() -> None:
    values = np.arange(12, dtype=np.float32).reshape(6, 2)
    windows = sliding_windows(values, 4)
    assert windows.shape == (3, 4, 2)
    np.testing.assert_array_equal(windows[1], values[1:5])


def test_contributions_are_non_negative_and_add_up_to_the_score(model: FittedModel) -> None:
    windows = sliding_windows(healthy(100, seed=2), model.window)
    windows[:, :, 2] -= 30.0
    scores, contributions = score_numpy(model, windows)
    assert contributions.min() >= 0.0
    np.testing.assert_allclose(contributions.sum(axis=1), scores, rtol=1e-4)
    assert np.mean(contributions.argmax(axis=1) == 2) > 0.9  # the shifted channel drives it


def test_threshold_is_chosen_on_readings_the_model_was_not_fitted_on() -> None:
    values = healthy(1000, seed=3)
    config = TrainConfig(target_far=0.05, margin=1.0, holdout=0.3)
    model = fit(values, CHANNELS, config)
    # The rule by hand: fit on the first 70 %, score the windows ending in the last 30 %.
    early = fit(values[:700], CHANNELS, config)
    held_out, _ = score_numpy(early, sliding_windows(values[700 - model.window + 1 :], 16))
    assert model.threshold == pytest.approx(float(np.quantile(held_out, 0.95)), rel=1e-6)
    doubled = fit(values, CHANNELS, TrainConfig(target_far=0.05, margin=2.0))
    assert doubled.threshold == pytest.approx(2 * model.threshold, rel=1e-6)


def test_default_models_rarely_flag_new_healthy_readings(model: FittedModel) -> None:
    scores, _ = score_numpy(model, sliding_windows(healthy(5000, seed=4), model.window))
    flags = apply(model.config.alarm, scores > model.threshold)
    assert flags.mean() < 0.03


def test_slow_healthy_drift_does_not_raise_alarms_but_a_fault_does() -> None:
    """A channel that wanders while healthy (as pump temperatures do) is judged by its slope,
    so its level may move on after training without alarms; a real fault still shows."""
    values = healthy(3000, seed=5, drift_per_reading=0.2)  # 8 SDs over the 400 fitted
    train, later = values[:400], values[400 - 15 :]
    robust = fit(train, CHANNELS, TrainConfig())
    assert "slope(voltage)" in robust.feature_names()
    level = fit(train, CHANNELS, TrainConfig(features="level"))
    windows = sliding_windows(later, 16)

    def flagged(m: FittedModel, w: NDArray[np.float32]) -> float:
        scores, _ = score_numpy(m, w)
        return float(apply(m.config.alarm, scores > m.threshold).mean())

    assert flagged(robust, windows) < 0.05
    assert flagged(level, windows) > 0.5
    faulty = windows.copy()
    faulty[:, :, 1] += 1.0  # pressure off its correlation with the others
    assert flagged(robust, faulty) > 0.9


@pytest.mark.parametrize(
    ("values", "channels", "message"),
    [
        (healthy(100), CHANNELS, "too few training rows: 100"),
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
        {"window": 1},
        {"algorithm": "forest"},
        {"components": 1.5},
        {"target_far": 1.0},
        {"margin": 0.0},
        {"holdout": 0.0},
    ],
)
def test_config_rejects_out_of_range_values(config: dict[str, object]) -> None:
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


def _skab(relative: str) -> tuple[list[str], NDArray[np.float32], NDArray[np.bool_] | None]:
    data = read_csv(skab_file(relative))
    return data.channels, data.values, data.anomaly


def _flagged(model: FittedModel, values: NDArray[np.float32]) -> NDArray[np.bool_]:
    scores, _ = score_numpy(model, sliding_windows(values, model.window))
    return apply(model.config.alarm, scores > model.threshold)


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
