"""A broken sensor is not a sick machine: the simulator's stuck, dropout and spike faults go
through the node's pipeline with a model trained by the hub's trainer; each is reported as a
sensor fault on its channel, and the pump's machine-anomaly episodes do not rise."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import msgspec
import numpy as np
import pytest

from cloud_hub.models.onnx_export import save_model, train_model
from cloud_hub.models.trainer import TrainConfig
from edge_node.scoring.batcher import ResultBatcher
from edge_node.scoring.events import EpisodeConfig
from edge_node.scoring.pipeline import Pipeline, Scored
from edge_node.scoring.runtime import ModelRuntime
from edge_node.scoring.validation import Validator
from edge_node.sources import PumpSimulator, parse_fault
from edge_node.sources.simulator import CHANNELS

RATE_HZ = 2.0
MINUTES = 20


def readings(seed: int, minutes: float, faults: tuple[str, ...] = ()) -> PumpSimulator:
    return PumpSimulator(
        seed=seed,
        rate_hz=RATE_HZ,
        speed=0,
        wall_start=1_000.0,
        faults=[parse_fault(f) for f in faults],
        max_block=4096,
    )


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    train = np.concatenate([readings(s, 0).read(int(RATE_HZ * 3600)).values for s in (11, 12)])
    onnx, manifest = train_model(
        train,
        list(CHANNELS),
        name="pump",
        version="1",
        trained_by="test",
        config=TrainConfig(),
        now=0.0,
        period_s=1 / RATE_HZ,
    )
    # The trainer records stuck times; physical limits come from a person: the current sensor's
    current = msgspec.structs.replace(manifest.sensors["current"], low=0.0, high=20.0)
    manifest = msgspec.structs.replace(manifest, sensors={**manifest.sensors, "current": current})
    path = tmp_path_factory.mktemp("model")
    save_model(path, onnx, manifest)
    return path


def run(
    model_dir: Path, seed: int, faults: tuple[str, ...] = ()
) -> tuple[list[Scored], Counter[str]]:
    """The pump through the node's pipeline in blocks of 8 readings; what came out and the
    faulty readings counted for telemetry."""
    runtime = ModelRuntime.load(model_dir, sensors=list(CHANNELS))
    pipeline = Pipeline(runtime, list(CHANNELS), ResultBatcher(256, 1.0), EpisodeConfig())
    sim = readings(seed, MINUTES, faults)
    out = []
    for _ in range(int(MINUTES * 60 * RATE_HZ) // 8):
        out.append(pipeline.process(sim.read(8), 0.0, lambda: 0.0))
    return out, pipeline.sensor_faults


def machine_openings(scored: list[Scored]) -> int:
    return sum(c.change.state == "open" for s in scored for c in s.changes)


@pytest.mark.parametrize(
    ("fault", "channel", "kind"),
    [
        ("stuck:thermocouple:300:300", "thermocouple", "stuck"),
        ("dropout:current:300:300", "current", "dropout"),
        ("spike:pressure:300:300:15", "pressure", "spike"),
        ("stuck:accelerometer1rms:300:300", "accelerometer1rms", "stuck"),
        ("spike:voltage:300:300:15", "voltage", "spike"),
        ("spike:current:300:300:150", "current", "range"),  # beyond the physical 20 A
    ],
)
def test_sensor_faults_are_named_and_do_not_open_machine_episodes(
    model_dir: Path, fault: str, channel: str, kind: str
) -> None:
    healthy, _ = run(model_dir, seed=5)
    faulty, counted = run(model_dir, seed=5, faults=(fault,))
    changes = [f.change for s in faulty for f in s.sensors]
    opened = [c for c in changes if c.state == "open"]
    assert opened, f"{fault}: no sensor fault reported"
    assert {c.channel for c in opened} == {channel}
    assert opened[0].fault == kind
    # it opens within the stuck time of the fault's start (readings are stamped from 1000 s)
    assert 1_300.0 <= opened[0].started <= 1_300.0 + 60.0
    closed = [c for c in changes if c.state == "close"]
    assert closed and closed[-1].ended is not None and closed[-1].ended <= 1_600.0
    assert machine_openings(faulty) <= machine_openings(healthy)
    assert counted[f"{channel}:{kind}"] == sum(c.readings for c in closed if c.fault == kind)
    assert not any(s.error for s in faulty), "the model never sees a NaN"


# seed 8 starts with its slow thermocouple beyond the (short) training range
@pytest.mark.parametrize("seed", [6, 8])
def test_a_healthy_pump_has_no_sensor_faults(model_dir: Path, seed: int) -> None:
    scored, counted = run(model_dir, seed=seed)
    assert not [f for s in scored for f in s.sensors] and not counted


def test_block_sizes_do_not_change_the_checks(model_dir: Path) -> None:
    manifest = ModelRuntime.load(model_dir, sensors=list(CHANNELS)).manifest
    faults = ("stuck:thermocouple:20:30", "dropout:current:25:5", "spike:pressure:10:40:15")
    values = readings(7, 2, faults).read(int(120 * RATE_HZ)).values
    whole, single = Validator(manifest), Validator(manifest)
    a = whole.check(0.0, 1 / RATE_HZ, values)
    parts = [single.check(i / RATE_HZ, 1 / RATE_HZ, values[i : i + 1]) for i in range(len(values))]
    np.testing.assert_array_equal(a.faulty, np.concatenate([p.faulty for p in parts]))
    np.testing.assert_array_equal(a.in_window, np.concatenate([p.in_window for p in parts]))
    np.testing.assert_array_equal(a.values, np.concatenate([p.values for p in parts]))
    # the same episodes (a block reports its channels in order, single readings in time order)
    opened = [c for p in parts for c in p.changes if c.state == "open"]
    whole_opened = [c for c in a.changes if c.state == "open"]
    key = lambda c: (c.channel, c.fault, c.started)  # noqa: E731
    assert sorted(map(key, whole_opened)) == sorted(map(key, opened))
    assert {c.channel for c in opened} == {"thermocouple", "current", "pressure"}
    assert not np.isnan(a.values).any()


def test_a_drifting_process_is_the_machines_not_a_sensor_fault(model_dir: Path) -> None:
    # scripts/demo.py's pump-3: pressure moves far out of its training range, gradually
    scored, counted = run(model_dir, seed=5, faults=("drift:pressure:60:1800:90",))
    assert not [f for s in scored for f in s.sensors] and not counted
    opened = [c.change for s in scored for c in s.changes if c.change.state == "open"]
    assert opened and opened[0].channels[0][0] == "pressure"


def test_a_model_without_sensor_specs_checks_dropouts_alone(model_dir: Path) -> None:
    # No bounds on any channel: the quick test for a clean block looks for NaN alone, and
    # gives what the comparisons against infinite bounds give, infinities included.
    manifest = msgspec.structs.replace(
        ModelRuntime.load(model_dir, sensors=list(CHANNELS)).manifest, sensors={}
    )
    values = readings(9, 1).read(40).values
    for cells in ([], [(3, 1, np.inf)], [(3, 1, np.inf), (5, 2, -np.inf)], [(7, 0, np.nan)]):
        block = values.copy()
        for row, column, value in cells:
            block[row, column] = value
        quick, full = Validator(manifest), Validator(manifest)
        full._bounded = True  # the comparisons against (infinite) bounds
        for part in (block[:20], block[20:], block[:1]):
            a, b = quick.check(0.0, 0.5, part), full.check(0.0, 0.5, part)
            np.testing.assert_array_equal(a.values, b.values)
            np.testing.assert_array_equal(a.faulty, b.faulty)
            np.testing.assert_array_equal(a.in_window, b.in_window)
            assert a.changes == b.changes and a.counts == b.counts
        assert quick._bounded is False
