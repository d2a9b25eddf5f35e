"""What drift statistics cost on a node, against the scoring path measured in the same run.

A node polling a 50 Hz source gets blocks of one or two readings (its loop waits up to 20 ms
for broker events when idle), so per-block overhead is what counts. The bench scores simulated
pump readings in blocks of ``--block`` readings through the node's pipeline (window -> ONNX ->
alarm -> batches, episodes, drift) and times the pipeline's drift accumulator separately:

    drift share = time in DriftAccumulator.add + report / time in Pipeline.process

Drift reports are taken every ``--interval`` seconds of readings, as the node does.

    .venv/bin/python bench/drift_cost.py [--rate-hz 50] [--block 1] [--seconds 120]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cloud_hub.models.onnx_export import save_model, train_model  # noqa: E402
from cloud_hub.models.trainer import TrainConfig  # noqa: E402
from edge_node.scoring.batcher import ResultBatcher  # noqa: E402
from edge_node.scoring.events import EpisodeConfig  # noqa: E402
from edge_node.scoring.pipeline import Pipeline  # noqa: E402
from edge_node.scoring.runtime import ModelRuntime  # noqa: E402
from edge_node.sources import PumpSimulator  # noqa: E402


class _Timed:
    """Wraps the drift accumulator and adds up the time spent in it."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.seconds = 0.0

    def add(self, *args: Any) -> None:
        start = time.perf_counter()
        self.inner.add(*args)
        self.seconds += time.perf_counter() - start

    def report(self) -> Any:
        start = time.perf_counter()
        out = self.inner.report()
        self.seconds += time.perf_counter() - start
        return out


def _readings(seed: int, rate_hz: float, seconds: float) -> np.ndarray[Any, Any]:
    sim = PumpSimulator(seed=seed, rate_hz=rate_hz, speed=0, wall_start=0.0, max_block=4096)
    return sim.read(int(rate_hz * seconds)).values


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate-hz", type=float, default=50.0)
    parser.add_argument("--block", type=int, default=1, help="readings per block (default 1)")
    parser.add_argument("--seconds", type=float, default=120.0, help="readings scored, in s")
    parser.add_argument("--interval", type=float, default=60.0, help="drift report interval, s")
    args = parser.parse_args()
    train = np.concatenate([_readings(seed, args.rate_hz, 600) for seed in (11, 12)])
    channels = PumpSimulator(seed=1, speed=0, wall_start=0.0).channels
    onnx, manifest = train_model(
        train,
        channels,
        name="bench",
        version="1",
        trained_by="bench",
        config=TrainConfig(),
        now=0.0,
    )
    with tempfile.TemporaryDirectory() as work:
        save_model(Path(work), onnx, manifest)
        runtime = ModelRuntime.load(Path(work), sensors=channels)
    pipeline = Pipeline(runtime, channels, ResultBatcher(256, 1.0), EpisodeConfig())
    timed = _Timed(pipeline._lane.drift)
    pipeline._lane.drift = timed  # type: ignore[assignment]
    values = _readings(3, args.rate_hz, args.seconds)
    period, every = 1.0 / args.rate_hz, int(args.interval * args.rate_hz)
    total, next_report = 0.0, every
    from edge_node.sources.base import Block

    for i in range(0, len(values), args.block):
        block = Block(i * period, period, values[i : i + args.block])
        start = time.perf_counter()
        pipeline.process(block, 0.0, time.perf_counter)
        total += time.perf_counter() - start
        if i + args.block >= next_report:
            timed.report()
            next_report += every
    timed.report()
    per_reading_us = total / len(values) * 1e6
    print(f"{len(values)} readings at {args.rate_hz:g} Hz in blocks of {args.block}")
    print(f"pipeline.process: {per_reading_us:.1f} us/reading (incl. drift)")
    print(f"drift add+report: {timed.seconds / len(values) * 1e6:.1f} us/reading")
    print(f"drift share of the scoring path: {timed.seconds / total:.1%}")
    core = timed.seconds / args.seconds
    print(f"node CPU at {args.rate_hz:g} Hz for drift: {core:.2%} of a core")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
