"""Judging a candidate and a promoted model (pure), and making one from a capture (catalog on
disk, no broker): a pump settled at a new normal gets a candidate that passes, a pump whose
model is still quiet gets none, and a model without a reference cannot be replaced."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import numpy as np
import pytest

from cloud_hub.models.captures import CaptureData
from cloud_hub.models.catalog import Catalog, Reference
from cloud_hub.models.trainer import TrainConfig
from cloud_hub.retraining.candidate import CandidateError, CandidateJob, build_candidate
from cloud_hub.retraining.compare import (
    Comparison,
    Counts,
    Limits,
    bake_verdict,
    far,
    flag_rate,
    judge,
    recipe_of,
    split,
)
from edge_node.sources.simulator import NOMINAL_SD, PumpSimulator
from schemas.alarm import AlarmSpec
from schemas.manifest import Manifest

LIMITS = Limits(max_far_held_back=0.02, max_far_increase=0.005)
RATE = 20.0


def comparison(held: float, ref_current: float, ref_candidate: float) -> Comparison:
    return Comparison(0.9, held, ref_current, ref_candidate, 600, 3600)


@pytest.mark.parametrize(
    ("c", "passed", "why"),
    [
        (comparison(0.0, 0.0, 0.0), True, []),
        (comparison(0.02, 0.01, 0.015), True, []),
        (comparison(0.03, 0.0, 0.0), False, ["held-back"]),
        (comparison(0.0, 0.0, 0.006), False, ["healthy reference"]),
        (comparison(0.5, 0.0, 0.2), False, ["held-back", "healthy reference"]),
    ],
    ids=["clean", "at-the-limits", "noisy-on-new-normal", "raises-reference", "both"],
)
def test_a_candidate_passes_only_within_both_limits_and_every_failure_is_named(
    c: Comparison, passed: bool, why: list[str]
) -> None:
    ok, reasons = judge(c, LIMITS)
    assert ok is passed and len(reasons) == len(why)
    for reason, word in zip(reasons, why, strict=True):
        assert word in reason


def test_far_counts_what_the_alarm_rule_flags_not_single_exceedances() -> None:
    alarm = AlarmSpec(open_after=2, open_within=3, close_after=2)
    scores = np.array([0, 5, 0, 0, 0, 5, 5, 0, 0, 0], dtype=np.float32)
    # A lone exceedance opens nothing; two in a row open at the second (reading 6), which
    # stays flagged with reading 7; two quiet readings after the last hit close it at 8.
    assert far(scores, 1.0, alarm) == pytest.approx(2 / 10)
    assert far(np.array([np.nan, 0.0], np.float32), 1.0, alarm) == 0.0
    with pytest.raises(ValueError, match="no scores"):
        far(np.zeros(0, np.float32), 1.0, alarm)


def test_split_keeps_time_order_and_refuses_a_silly_share() -> None:
    values = np.arange(10, dtype=np.float32).reshape(10, 1)
    train, held = split(values, 0.3)
    assert train[:, 0].tolist() == list(range(7)) and held[:, 0].tolist() == [7, 8, 9]
    with pytest.raises(ValueError, match="held_back"):
        split(values, 1.0)


@pytest.mark.parametrize(
    ("before", "after", "ok"),
    [
        (0.9, 0.0, True),
        (0.01, 0.02, True),
        (0.01, 0.03, False),
        (None, 0.5, True),
        (0.5, None, False),
    ],
    ids=["better", "within-tolerance", "worse", "nothing-before", "nothing-after"],
)
def test_a_bake_fails_when_the_flag_rate_gets_worse_than_before(
    before: float | None, after: float | None, ok: bool
) -> None:
    assert bake_verdict(before, after, 0.01)[0] is ok


def test_flag_rate_between_two_snapshots() -> None:
    assert flag_rate(Counts(100, 10), Counts(300, 30)) == pytest.approx(0.1)
    assert flag_rate(Counts(100, 10), Counts(100, 10)) is None


def _pump(seed: int, n: int, offset_sd: float = 0.0) -> np.ndarray:
    values = PumpSimulator(seed=seed, rate_hz=RATE, speed=0, wall_start=0.0, max_block=4096)
    data = values.read(n).values.copy()
    data[:, 3] += offset_sd * NOMINAL_SD["pressure"]  # column 3 is pressure
    return data


@pytest.fixture(scope="module")
def catalog_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    from cloud_hub.models.onnx_export import train_model

    root = tmp_path_factory.mktemp("models")
    sim = PumpSimulator(seed=11, rate_hz=RATE, speed=0, wall_start=0.0)
    healthy = _pump(11, 24000)
    config = TrainConfig(target_far=0.02)
    onnx_bytes, manifest = train_model(
        healthy,
        sim.channels,
        name="pump-pca",
        version="1",
        trained_by="tests",
        config=config,
        now=time.time(),
        period_s=1 / RATE,
    )
    catalog = Catalog(root)
    catalog.add(onnx_bytes, manifest, time.time(), source="tests")
    catalog.keep_reference("pump-pca", "1", Reference(sim.channels, 1 / RATE, healthy[12000:]))
    assert recipe_of(manifest) == config  # the candidate is made the way v1 was
    catalog.close()
    yield root


def _job(values: np.ndarray, current: str = "1") -> CandidateJob:
    channels = PumpSimulator(seed=0, wall_start=0.0).channels
    capture = CaptureData("c1", "pump-3", channels, 0.0, 1 / RATE, values.astype(np.float32))
    return CandidateJob("w1", capture, "pump-pca", current, 0.3, LIMITS)


def test_a_pump_at_a_new_normal_gets_a_registered_candidate(catalog_dir: Path) -> None:
    result = build_candidate(catalog_dir, _job(_pump(3, 2000, offset_sd=4)), time.time())
    c = result.comparison
    assert c.current_held_back > 0.5  # the old model flags the new normal
    assert result.registered and result.version == "2", result.reasons
    assert c.candidate_held_back <= LIMITS.max_far_held_back
    assert c.candidate_reference <= c.current_reference + LIMITS.max_far_increase
    catalog = Catalog(catalog_dir)
    try:
        assert catalog.get("pump-pca", "2") is not None
        kept = catalog.reference("pump-pca", "2")
        assert kept is not None and len(kept.values) == 12000 + 1400  # old normal + new
    finally:
        catalog.close()


def test_a_pump_whose_model_stays_quiet_gets_no_candidate(catalog_dir: Path) -> None:
    result = build_candidate(catalog_dir, _job(_pump(2, 2000)), time.time())
    assert not result.registered and not result.version
    assert "nothing to gain" in result.reasons[0]


def test_a_model_without_a_reference_or_unknown_cannot_be_replaced(catalog_dir: Path) -> None:
    with pytest.raises(CandidateError, match="not in the catalog"):
        build_candidate(catalog_dir, _job(_pump(3, 2000, 4), current="9"), time.time())
    catalog = Catalog(catalog_dir)
    try:
        source = catalog.get("pump-pca", "1")
        assert source is not None
        catalog.add(catalog.artifact("pump-pca", "1"), _renamed(source.manifest), 0.0, "tests")
    finally:
        catalog.close()
    with pytest.raises(CandidateError, match="no healthy reference"):
        build_candidate(catalog_dir, _job(_pump(3, 2000, 4), current="1b"), time.time())


def _renamed(manifest: Manifest) -> Manifest:
    renamed: Manifest = msgspec.structs.replace(manifest, version="1b")
    return renamed
