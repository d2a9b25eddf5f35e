"""The node's in-process scoring path against a bare onnxruntime loop, same model and windows.

(a) baseline: ``InferenceSession.run`` over windows precomputed once, in runs of 256 windows
(what the node's model runtime is handed per block); (b) ``Pipeline.process`` over the same
readings in blocks of 256 readings and of 1 reading (a node polling at 50 Hz); the ratio is
(b)/(a). Also the capture ring's memory growth over a simulated 30 minutes at 50 Hz.

    .venv/bin/python bench/node_path.py [--rounds 5] [--repeat 1] [--skab-dir DIR] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.lib.stride_tricks import sliding_window_view

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cloud_hub.models.onnx_export import save_model, train_model  # noqa: E402
from cloud_hub.models.trainer import TrainConfig  # noqa: E402
from edge_node.lifecycle.capture import CaptureRing  # noqa: E402
from edge_node.scoring.batcher import ResultBatcher  # noqa: E402
from edge_node.scoring.events import EpisodeConfig  # noqa: E402
from edge_node.scoring.pipeline import Pipeline  # noqa: E402
from edge_node.scoring.runtime import ModelRuntime  # noqa: E402
from edge_node.sources.base import Block  # noqa: E402
from schemas.readings_csv import read_csv  # noqa: E402

DEFAULT_SKAB = Path(os.environ.get("SKAB_DIR", REPO.parent / "shared" / "data" / "skab"))
RUN = 256


def bare(model: Path, values: np.ndarray, window: int, repeat: int, run: int = RUN) -> float:
    """Readings/s of InferenceSession.run alone over windows precomputed once, ``run`` at a time."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model / "model.onnx"), options)
    name = session.get_inputs()[0].name
    outputs = [o.name for o in session.get_outputs()]
    padded = np.concatenate([np.repeat(values[:1], window - 1, axis=0), values])
    windows = np.ascontiguousarray(
        sliding_window_view(padded, window, axis=0).transpose(0, 2, 1), dtype=np.float32
    )
    chunks = [windows[i : i + run] for i in range(0, len(windows), run)]
    start = time.perf_counter()
    for _ in range(repeat):
        for chunk in chunks:
            session.run(outputs, {name: chunk})
    return len(windows) * repeat / (time.perf_counter() - start)


def node(model: Path, channels: list[str], values: np.ndarray, block: int, repeat: int) -> float:
    """Readings/s of Pipeline.process over the readings in blocks of ``block`` (50 Hz time)."""
    runtime = ModelRuntime.load(model, sensors=channels)
    pipeline = Pipeline(runtime, channels, ResultBatcher(256, 1.0), EpisodeConfig())
    period = 0.02
    blocks = [values[i : i + block] for i in range(0, len(values), block)]
    total, t, start = 0, 0.0, time.perf_counter()
    for _ in range(repeat):
        for b in blocks:
            pipeline.process(Block(t, period, b), t, time.perf_counter)
            t += period * len(b)
            total += len(b)
    return total / (time.perf_counter() - start)


def capture_growth(channels: int, minutes: float, capacity: int = 20_000) -> tuple[float, float]:
    """(bytes traced once the node's default capture ring is made, growth over ``minutes`` of
    1-reading polls at 50 Hz after that): what the ring costs a node polling one at a time."""
    tracemalloc.start()
    ring = CaptureRing(capacity, channels)
    row = np.zeros((1, channels), np.float32)
    fresh = tracemalloc.get_traced_memory()[0]
    t = 0.0
    for _ in range(int(minutes * 60 * 50)):
        ring.add(t, 0.02, row)
        t += 0.02
    after = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    return float(fresh), float(after - fresh)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=1, help="passes over the readings per round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds, best kept")
    parser.add_argument("--skab-dir", type=Path, default=DEFAULT_SKAB)
    parser.add_argument("--profile", action="store_true", help="cProfile the 256-reading blocks")
    args = parser.parse_args()
    healthy = read_csv(args.skab_dir / "anomaly-free" / "anomaly-free.csv")
    files = sorted((args.skab_dir / "valve1").glob("*.csv"), key=lambda p: int(p.stem))
    values = np.concatenate([read_csv(f).values for f in files]).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        onnx, manifest = train_model(
            healthy.values[:3000],
            healthy.channels,
            name="bench",
            version="1",
            trained_by="bench",
            config=TrainConfig(),
            now=time.time(),
        )
        save_model(model, onnx, manifest)
        window = manifest.input.window
        print(f"model window {window}, {len(healthy.channels)} channels, {len(values):,} readings")
        for block in (RUN, 1):
            # The machine is shared: alternate the two and keep each one's best round.
            base, rate = 0.0, 0.0
            for _ in range(args.rounds if block > 1 else 1):
                base = max(base, bare(model, values, window, args.repeat, block))
                rate = max(rate, node(model, healthy.channels, values, block, args.repeat))
            print(
                f"blocks of {block:3d}: bare onnxruntime loop (baseline) {base:12,.0f} readings/s; "
                f"Pipeline.process {rate:12,.0f} readings/s = {rate / base:.3f} x baseline"
            )
        if args.profile:
            cProfile.runctx(
                "node(model, healthy.channels, values, RUN, 1)",
                globals(),
                {"model": model, "healthy": healthy, "values": values, "RUN": RUN},
                "/tmp/node_path.prof",
            )
            pstats.Stats("/tmp/node_path.prof").sort_stats("tottime").print_stats(25)
    fresh, growth = capture_growth(len(healthy.channels), 30.0)
    print(
        f"capture ring (20,000 readings, 1-reading polls at 50 Hz): {fresh / 1e6:.2f} MB when "
        f"made, {growth / 1e6:+.3f} MB over 30 min (raw size {20_000 * 8 * 4 / 1e6:.2f} MB)"
    )


if __name__ == "__main__":
    main()
