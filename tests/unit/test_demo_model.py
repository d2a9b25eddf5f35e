"""The demo's promise, checked without processes: the model the demo trains raises no alarm on
its healthy pumps and does on the faulty one (the same simulator, recipe, fault and rate)."""

from __future__ import annotations

import numpy as np
import pytest
from numpy.typing import NDArray

from cloud_hub.models.trainer import DEFAULTS, FittedModel, fit, score_numpy, sliding_windows
from edge_node.sources import PumpSimulator, parse_fault
from schemas.alarm import apply, openings

RATE_HZ = 10.0  # scripts/demo.py's default
FAULT = "drift:pressure:60:1800:90"  # scripts/demo.py's pump-3


def simulate(seed: int, seconds: float, faults: tuple[str, ...] = ()) -> NDArray[np.float32]:
    sim = PumpSimulator(
        seed=seed,
        rate_hz=RATE_HZ,
        speed=0,
        wall_start=0.0,
        faults=[parse_fault(f) for f in faults],
        max_block=4096,
    )
    total, got = int(seconds * RATE_HZ), 0
    parts: list[NDArray[np.float32]] = []
    while got < total:
        block = sim.poll(0.0)
        assert block is not None
        parts.append(block.values)
        got += block.n
    return np.concatenate(parts)[:total]


@pytest.fixture(scope="module")
def model() -> tuple[FittedModel, list[str]]:
    # The demo trains on two hours of four other pumps (seeds 11..14).
    history = np.concatenate([simulate(seed, 7200) for seed in (11, 12, 13, 14)])
    channels = PumpSimulator(seed=1, rate_hz=RATE_HZ, speed=0, wall_start=0.0).channels
    return fit(history, channels, DEFAULTS["pca"]), channels


def alarms(model: FittedModel, values: NDArray[np.float32]) -> int:
    scores, _ = score_numpy(model, sliding_windows(values, model.window))
    return len(openings(apply(model.config.alarm, scores > model.threshold)))


@pytest.mark.parametrize("seed", [1, 2])
def test_the_demos_healthy_pumps_raise_no_alarm(
    model: tuple[FittedModel, list[str]], seed: int
) -> None:
    assert alarms(model[0], simulate(seed, 600)) == 0


def test_the_demos_faulty_pump_raises_an_alarm(model: tuple[FittedModel, list[str]]) -> None:
    assert alarms(model[0], simulate(3, 300, (FAULT,))) >= 1
