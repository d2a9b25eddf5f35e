"""The node's vectorised scoring path against the computations it replaced, on SKAB data.

Drift reports must equal those of the reference implementation (tests/reference_drift.py, the
node's drift statistics before they were vectorised over columns) in every count, flag and
sample, and in every statistic to within rounding: a relative difference of at most ``RTOL``
(sums are now taken over the whole buffer rather than in chunks of 128 rows, which changes the
order of float64 additions and nothing else). Flags, episodes and sensor faults must not change
at all with the block size, whatever shortcut a block of one reading takes.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from numpy.typing import NDArray

from cloud_hub.models.onnx_export import save_model, train_model
from cloud_hub.models.trainer import TrainConfig
from edge_node.scoring.batcher import ResultBatcher
from edge_node.scoring.drift import DriftAccumulator, DriftReport
from edge_node.scoring.events import EpisodeConfig
from edge_node.scoring.pipeline import Pipeline
from edge_node.scoring.runtime import ModelRuntime
from edge_node.scoring.window import Windower
from edge_node.sources.base import Block
from schemas.readings_csv import read_csv
from tests.reference_drift import ReferenceDrift
from tests.skab import skab_file

RTOL = 1e-9
ATOL = 1e-12
PERIOD = 0.02
REPORT_EVERY = 3000  # readings between drift reports


@pytest.fixture(scope="module")
def skab(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], NDArray[np.float32]]:
    """A model trained on healthy SKAB readings, and valve1 recordings with some sensor
    faults added (dropouts, a stuck stretch, one out-of-range spike)."""
    healthy = read_csv(skab_file("anomaly-free/anomaly-free.csv"))
    folder = tmp_path_factory.mktemp("model") / "m"
    onnx, manifest = train_model(
        healthy.values[:3000],
        healthy.channels,
        name="ref",
        version="1",
        trained_by="tests",
        config=TrainConfig(window=8),
        now=time.time(),
        period_s=PERIOD,  # so that the manifest gives stuck times: every check runs
    )
    save_model(folder, onnx, manifest)
    files = [skab_file(f"valve1/{i}.csv") for i in range(6)]
    values = np.concatenate([read_csv(f).values for f in files]).astype(np.float32)
    values[100:140, 2] = np.nan
    values[500, :] = np.nan
    values[2000:2600, 4] = values[2000, 4]
    values[4000, 1] = 1e6
    return folder, healthy.channels, values


def _blocks(n: int, size: int) -> Iterator[slice]:
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _close(a: float, b: float) -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return math.isclose(a, b, rel_tol=RTOL, abs_tol=ATOL)


def _assert_same(new: DriftReport, old: DriftReport) -> None:
    assert (new.start, new.end, new.n) == (old.start, old.end, old.n)
    pairs = [(n, o) for n, o in zip(new.channels, old.channels, strict=True)]
    pairs.append((new.score, old.score))  # type: ignore[arg-type]
    for n, o in pairs:
        for name in n.__struct_fields__:
            a, b = getattr(n, name), getattr(o, name)
            if isinstance(a, float) and not isinstance(a, bool):
                assert _close(a, b), f"{name}: {a!r} vs reference {b!r}"
            else:
                assert a == b, f"{name}: {a!r} vs reference {b!r}"


def _model_scores(
    folder: Path, channels: list[str], values: NDArray[np.float32]
) -> NDArray[np.float32]:
    runtime = ModelRuntime.load(folder, sensors=channels)
    profiles = runtime.manifest.reference.channels
    windower = Windower(runtime.window, [profiles[c].mean for c in runtime.channels])
    columns = [channels.index(c) for c in runtime.channels]
    scores, _ = runtime.score(windower.push(values[:, columns]).windows)
    return scores


@pytest.mark.parametrize("block", [1, 7, 256, 1000])
def test_drift_reports_equal_the_reference_within_rounding(
    skab: tuple[Path, list[str], NDArray[np.float32]], block: int
) -> None:
    folder, channels, values = skab
    manifest = ModelRuntime.load(folder, sensors=channels).manifest
    new = DriftAccumulator(manifest.reference, channels, spec=manifest.drift)
    old = ReferenceDrift(manifest.reference, channels, spec=manifest.drift)
    scores = _model_scores(folder, channels, values)
    scores[700:710] = np.nan  # unscored readings (a model failure)
    flags = scores > manifest.threshold
    compared = seen = 0
    for rows in _blocks(len(values), block):
        t0 = rows.start * PERIOD
        new.add(t0, PERIOD, values[rows], scores[rows], flags[rows])
        old.add(t0, PERIOD, values[rows], scores[rows], flags[rows])
        seen += rows.stop - rows.start
        if seen >= REPORT_EVERY or rows.stop == len(values):
            seen = 0
            a, b = new.report(), old.report()
            assert a is not None and b is not None
            _assert_same(a, b)
            compared += 1
    assert compared >= 3


def _run(
    folder: Path, channels: list[str], values: NDArray[np.float32], block: int
) -> tuple[list[float], list[bool], list[object], list[object], dict[str, int]]:
    runtime = ModelRuntime.load(folder, sensors=channels)
    pipeline = Pipeline(runtime, channels, ResultBatcher(10**6, 1e9), EpisodeConfig(1, 1))
    changes: list[object] = []
    sensors: list[object] = []
    for rows in _blocks(len(values), block):
        t0 = rows.start * PERIOD
        out = pipeline.process(Block(t0, PERIOD, values[rows]), t0, time.perf_counter)
        changes += [c.change for c in out.changes]
        sensors += [s.change for s in out.sensors]
    (batch,) = pipeline.flush(0.0, force=True)
    return (
        batch.scores.tolist(),
        batch.flags.tolist(),
        changes,
        sensors,
        dict(pipeline.sensor_faults),
    )


def test_flags_episodes_and_sensor_faults_do_not_depend_on_the_block_size(
    skab: tuple[Path, list[str], NDArray[np.float32]],
) -> None:
    folder, channels, values = skab
    scores, flags, changes, sensors, faults = _run(folder, channels, values, 256)
    assert any(flags) and changes and sensors  # the data exercises every part
    assert {key.split(":")[1] for key in faults} >= {"dropout", "spike", "stuck"}
    for block in (1, 7):
        other = _run(folder, channels, values, block)
        assert other[1] == flags
        assert other[4] == faults
        # onnxruntime's float32 scores can differ in the last bits with the batch size, and
        # with them an episode's peak and channel shares.
        np.testing.assert_allclose(other[0], scores, rtol=1e-4)
        assert len(other[2]) == len(changes)
        for mine, theirs in zip(other[2], changes, strict=True):
            _assert_close(vars(mine), vars(theirs))
        assert len(other[3]) == len(sensors)
        for mine, theirs in zip(other[3], sensors, strict=True):  # times: t0 + i * period
            _assert_close(vars(mine), vars(theirs))


def _assert_close(a: object, b: object) -> None:
    """Equal, floats to within 1e-4 relative (anywhere inside dicts, lists and tuples)."""
    if isinstance(a, float) and isinstance(b, float):
        assert math.isclose(a, b, rel_tol=1e-4), f"{a} != {b}"
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys()
        for key in a:
            _assert_close(a[key], b[key])
    elif isinstance(a, list | tuple) and isinstance(b, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_close(x, y)
    else:
        assert a == b
