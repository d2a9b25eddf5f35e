"""What a shadow run costs the node: CPU per reading with and without one, same model twice.

(a) baseline: ``Pipeline.process`` alone over the SKAB valve1 readings; (b) the same with a
shadow run of the same model (a second session of the same file) beside it. Both in blocks of
1 reading (a node polling at 50 Hz) and of 256 readings. CPU is the process's CPU time
(``time.process_time``; onnxruntime with one thread, as the node runs it). The two are
alternated for ``--rounds`` rounds; each round gives a ratio (b)/(a), and the median ratio is
printed with the median CPU per reading of each. At 50 Hz the candidate's extra CPU per reading
times 50 is the share of a core it takes, the figure a run's ``cpu_budget`` is judged against;
the run's own ``cpu_share`` (timed on the thread's CPU clock, as the node does) is printed
beside it.

    .venv/bin/python bench/shadow_cost.py [--rounds 5] [--skab-dir DIR]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.skab import DEFAULT_DIR, healthy_model, valve1_readings  # noqa: E402
from edge_node.scoring.batcher import ResultBatcher  # noqa: E402
from edge_node.scoring.events import EpisodeConfig  # noqa: E402
from edge_node.scoring.pipeline import Pipeline  # noqa: E402
from edge_node.scoring.runtime import ModelRuntime  # noqa: E402
from edge_node.scoring.shadow import Candidate, RunSpec, ShadowRun  # noqa: E402
from edge_node.sources.base import Block  # noqa: E402

PERIOD = 0.02  # 50 Hz


def cpu_per_reading(
    model: Path, channels: list[str], values: np.ndarray, block: int, shadow: bool
) -> tuple[float, float]:
    """(CPU seconds per reading of Pipeline.process over ``values`` in blocks of ``block``,
    the shadow run's own cpu_share at 50 Hz or NaN without one)."""
    pipeline = Pipeline(
        ModelRuntime.load(model, sensors=channels), channels, ResultBatcher(256, 1.0),
        EpisodeConfig(),
    )  # fmt: skip
    run = None
    if shadow:
        candidate = Candidate(ModelRuntime.load(model, sensors=channels), channels)
        spec = RunSpec("bench", duration_s=1e9, cpu_budget=1.0, report_s=60.0)
        run = ShadowRun(
            spec, candidate, pipeline.scorer, now=0.0, wall=0.0, cpu_clock=time.thread_time
        )
        pipeline.shadow = run
    blocks = [values[i : i + block] for i in range(0, len(values), block)]
    t = 0.0
    start = time.process_time()
    for b in blocks:
        pipeline.process(Block(t, PERIOD, b), t, time.perf_counter)
        t += PERIOD * len(b)
    cpu = time.process_time() - start
    share = run.cpu_share(t) if run is not None else float("nan")
    return cpu / len(values), share


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (median)")
    parser.add_argument("--skab-dir", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args()
    values = valve1_readings(args.skab_dir)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        manifest = healthy_model(args.skab_dir, model)
        print(
            f"model window {manifest.input.window}, {len(manifest.input.channels)} channels, "
            f"{len(values):,} readings, {args.rounds} rounds (medians)"
        )
        for block in (1, 256):
            alone, beside, ratios, shares = [], [], [], []
            for _ in range(args.rounds):
                a, _ = cpu_per_reading(model, manifest.input.channels, values, block, shadow=False)
                b, share = cpu_per_reading(
                    model, manifest.input.channels, values, block, shadow=True
                )
                alone.append(a)
                beside.append(b)
                ratios.append(b / a)
                shares.append(share)
            a_us, b_us = statistics.median(alone) * 1e6, statistics.median(beside) * 1e6
            print(
                f"blocks of {block:3d}: CPU per reading alone (baseline) {a_us:8.1f} us, "
                f"with a shadow run {b_us:8.1f} us = {statistics.median(ratios):.2f} x baseline "
                f"(range {min(ratios):.2f}-{max(ratios):.2f}); at 50 Hz the shadow adds "
                f"{(b_us - a_us) * 50 / 1e6:.2%} of a core, its run measured cpu_share "
                f"{statistics.median(shares):.2%}"
            )


if __name__ == "__main__":
    main()
