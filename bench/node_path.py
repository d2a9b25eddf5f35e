"""The node's in-process scoring path against a bare onnxruntime loop, same model and windows.

(a) baseline: ``InferenceSession.run`` over windows precomputed once, in runs of 256 windows
(what the node's model runtime is handed per block); (b) ``Pipeline.process`` over the same
readings in blocks of 256 readings and of 1 reading (a node polling at 50 Hz); the ratio is
(b)/(a). The two take turns block by block and are timed in the thread's CPU time, so that a
shared machine's load falls on both alike; the median ratio of ``--rounds`` rounds is reported.
Also the capture ring's memory growth over a simulated 30 minutes at 50 Hz.

    .venv/bin/python bench/node_path.py [--rounds 5] [--wall] [--skab-dir DIR] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
from numpy.lib.stride_tricks import sliding_window_view

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.skab import DEFAULT_DIR, healthy_model, valve1_readings  # noqa: E402
from edge_node.lifecycle.capture import CaptureRing  # noqa: E402
from edge_node.scoring.batcher import ResultBatcher  # noqa: E402
from edge_node.scoring.events import EpisodeConfig  # noqa: E402
from edge_node.scoring.pipeline import Pipeline  # noqa: E402
from edge_node.scoring.runtime import ModelRuntime  # noqa: E402
from edge_node.sources.base import Block  # noqa: E402

RUN = 256


def _session(model: Path) -> tuple[ort.InferenceSession, str, list[str]]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(model / "model.onnx"), options)
    return session, session.get_inputs()[0].name, [o.name for o in session.get_outputs()]


def _windows(values: np.ndarray, window: int) -> np.ndarray:
    padded = np.concatenate([np.repeat(values[:1], window - 1, axis=0), values])
    return np.ascontiguousarray(
        sliding_window_view(padded, window, axis=0).transpose(0, 2, 1), dtype=np.float32
    )


def interleaved(
    model: Path, channels: list[str], values: np.ndarray, block: int, clock: Callable[[], float]
) -> tuple[float, float]:
    """Readings/s of (bare InferenceSession.run over windows precomputed once, Pipeline.process
    over the raw readings), block by block in turn, so that both see the same machine.

    ``clock`` is the thread's CPU time by default: onnxruntime runs on the calling thread (one
    intra-op thread), and time spent waiting for a core on a shared machine counts for neither.
    """
    session, name, outputs = _session(model)
    runtime = ModelRuntime.load(model, sensors=channels)
    windows = _windows(values, runtime.window)
    pipeline = Pipeline(runtime, channels, ResultBatcher(256, 1.0), EpisodeConfig())
    period, bare_s, node_s = 0.02, 0.0, 0.0
    for start in range(0, len(values), block):
        t = start * period
        chunk, rows = windows[start : start + block], values[start : start + block]
        began = clock()
        session.run(outputs, {name: chunk})
        middle = clock()
        pipeline.process(Block(t, period, rows), t, time.perf_counter)
        node_s += clock() - middle
        bare_s += middle - began
    return len(values) / bare_s, len(values) / node_s


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
    parser.add_argument("--rounds", type=int, default=5, help="rounds, the median reported")
    parser.add_argument(
        "--single-readings", type=int, default=3000, help="readings scored one at a time"
    )
    parser.add_argument("--wall", action="store_true", help="wall-clock time, not thread CPU")
    parser.add_argument("--skab-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--profile", action="store_true", help="cProfile the 256-reading blocks")
    args = parser.parse_args()
    values = valve1_readings(args.skab_dir)
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        manifest = healthy_model(args.skab_dir, model)
        window, channels = manifest.input.window, manifest.input.channels
        print(f"model window {window}, {len(channels)} channels, {len(values):,} readings")
        clock = time.perf_counter if args.wall else time.thread_time
        for block in (RUN, 1):
            ratios, bases, rates = [], [], []
            for _ in range(args.rounds):
                rows = values if block > 1 else values[: args.single_readings]
                base, rate = interleaved(model, channels, rows, block, clock)
                bases.append(base)
                rates.append(rate)
                ratios.append(rate / base)
            print(
                f"blocks of {block:3d}: bare onnxruntime loop (baseline) "
                f"{statistics.median(bases):12,.0f} readings/s; Pipeline.process "
                f"{statistics.median(rates):12,.0f} readings/s = "
                f"{statistics.median(ratios):.3f} x baseline (median of {args.rounds} rounds; "
                f"ratios {', '.join(f'{r:.3f}' for r in ratios)})"
            )
        if args.profile:
            cProfile.runctx(
                "node(model, manifest.input.channels, values, RUN, 1)",
                globals(),
                {"model": model, "manifest": manifest, "values": values, "RUN": RUN},
                "/tmp/node_path.prof",
            )
            pstats.Stats("/tmp/node_path.prof").sort_stats("tottime").print_stats(25)
    fresh, growth = capture_growth(len(manifest.input.channels), 30.0)
    print(
        f"capture ring (20,000 readings, 1-reading polls at 50 Hz): {fresh / 1e6:.2f} MB when "
        f"made, {growth / 1e6:+.3f} MB over 30 min (raw size {20_000 * 8 * 4 / 1e6:.2f} MB)"
    )


if __name__ == "__main__":
    main()
