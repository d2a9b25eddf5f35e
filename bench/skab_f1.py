"""SKAB valve1 outlier benchmark through the real export and the real edge runtime.

Protocol (SKAB's outlier problem): in each file, fit on the first 400 readings, score the rest,
and pool TP/FP/FN/TN over all files; F1 = TP / (TP + (FP + FN) / 2). A z-score baseline and the
"flag everything" F1 are measured in the same run so the figure has reference points. A model
fitted on the first 400 readings of anomaly-free.csv then scores the rest: its FAR is printed.

    .venv/bin/python bench/skab_f1.py [--skab-dir DIR] [--window N] [--margin M] [--per-file]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from cloud_hub.models.onnx_export import save_model, train_model
from cloud_hub.models.trainer import TrainConfig, sliding_windows
from edge_node.scoring.runtime import ModelRuntime
from schemas.readings_csv import CsvData, read_csv

DEFAULT_SKAB = Path(__file__).resolve().parents[2] / "shared" / "data" / "skab"
BoolArray = NDArray[np.bool_]


@dataclass
class Counts:
    """Pooled confusion counts."""

    tp: int = 0
    fp: int = 0
    fn: int = 0
    tn: int = 0

    def add(self, flags: BoolArray, labels: BoolArray) -> None:
        """Count one file's flags against its labels."""
        self.tp += int(np.sum(flags & labels))
        self.fp += int(np.sum(flags & ~labels))
        self.fn += int(np.sum(~flags & labels))
        self.tn += int(np.sum(~flags & ~labels))

    def f1(self) -> float:
        """SKAB's F1: TP / (TP + (FP + FN) / 2)."""
        return _ratio(self.tp, self.tp + (self.fp + self.fn) / 2)

    def far(self) -> float:
        """False-alarm rate: FP / (FP + TN)."""
        return _ratio(self.fp, self.fp + self.tn)

    def mar(self) -> float:
        """Missed-alarm rate: FN / (FN + TP)."""
        return _ratio(self.fn, self.fn + self.tp)

    def line(self, label: str) -> str:
        """One printed row."""
        return (
            f"{label:<28} F1 {self.f1():.3f}   FAR {self.far():6.1%}   MAR {self.mar():6.1%}   "
            f"(TP {self.tp}, FP {self.fp}, FN {self.fn}, TN {self.tn})"
        )


@dataclass
class Result:
    """Flags of the model and of the baseline for the test part of one file."""

    model: BoolArray
    baseline: BoolArray
    train_s: float
    score_s: float


def _ratio(num: float, den: float) -> float:
    return num / den if den else float("nan")


def evaluate(
    data: CsvData, args: argparse.Namespace, config: TrainConfig, workdir: Path, tag: str
) -> Result:
    """Fit on the first rows with the real exporter, score the rest with the real runtime."""
    rows, window = args.train_rows, config.window
    start = time.perf_counter()
    onnx_bytes, manifest = train_model(
        data.values[:rows],
        data.channels,
        name="skab",
        version=tag,
        trained_by="bench/skab_f1.py",
        config=config,
        now=time.time(),
    )
    save_model(workdir / tag, onnx_bytes, manifest)
    runtime = ModelRuntime.load(workdir / tag, sensors=data.channels)
    trained = time.perf_counter()
    # Windows ending at each test reading; the first ones reach back into the training rows.
    windows = sliding_windows(data.values[rows - window + 1 :], window)
    scores, _ = runtime.score(windows)
    scored = time.perf_counter()
    return Result(
        model=scores > manifest.threshold,
        baseline=zscore_flags(data.values[:rows], windows, args.z),
        train_s=trained - start,
        score_s=scored - trained,
    )


def zscore_flags(train: NDArray[np.float32], windows: NDArray[np.float32], z: float) -> BoolArray:
    """Baseline: any channel's window mean more than ``z`` training std from its training mean."""
    window = windows.shape[1]
    reference = sliding_windows(train, window).astype(np.float64).mean(axis=1)
    mean, std = reference.mean(axis=0), reference.std(axis=0)
    deviation = np.abs(windows.astype(np.float64).mean(axis=1) - mean) / np.where(std > 0, std, 1)
    flags: BoolArray = deviation.max(axis=1) > z
    return flags


def parse_args() -> argparse.Namespace:
    """Command-line options."""
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--skab-dir", type=Path, default=Path(os.environ.get("SKAB_DIR", DEFAULT_SKAB))
    )
    parser.add_argument("--window", type=int, default=defaults.window)
    parser.add_argument("--components", type=float, default=defaults.components)
    parser.add_argument("--quantile", type=float, default=defaults.threshold_quantile)
    parser.add_argument("--margin", type=float, default=defaults.threshold_margin)
    parser.add_argument("--train-rows", type=int, default=400)
    parser.add_argument("--z", type=float, default=3.0, help="baseline z-score limit")
    parser.add_argument("--per-file", action="store_true", help="print each file's counts")
    return parser.parse_args()


def main() -> None:
    """Run the benchmark and print the figures."""
    args = parse_args()
    components = int(args.components) if args.components >= 1 else args.components
    config = TrainConfig(
        window=args.window,
        components=components,
        threshold_quantile=args.quantile,
        threshold_margin=args.margin,
    )
    files = sorted((args.skab_dir / "valve1").glob("*.csv"), key=lambda p: int(p.stem))
    if not files:
        raise SystemExit(f"no SKAB valve1 files under {args.skab_dir} (set --skab-dir)")
    began = time.perf_counter()
    model, baseline = Counts(), Counts()
    train_s = score_s = 0.0
    with tempfile.TemporaryDirectory(prefix="skab-bench-") as tmp:
        for path in files:
            data = read_csv(path)
            if data.anomaly is None:
                raise SystemExit(f"{path}: no anomaly column")
            labels = data.anomaly[args.train_rows :]
            result = evaluate(data, args, config, Path(tmp), path.stem)
            model.add(result.model, labels)
            baseline.add(result.baseline, labels)
            train_s, score_s = train_s + result.train_s, score_s + result.score_s
            if args.per_file:
                single = Counts()
                single.add(result.model, labels)
                print(single.line(f"  valve1/{path.name}"))
        free = read_csv(args.skab_dir / "anomaly-free" / "anomaly-free.csv")
        free_result = evaluate(free, args, config, Path(tmp), "anomaly-free")
    wall = time.perf_counter() - began
    report(
        args,
        config,
        files=files,
        model=model,
        baseline=baseline,
        free=free_result,
        free_rows=len(free.values),
    )
    print(
        f"wall time {wall:.2f} s (fit+export+measure+load {train_s:.2f} s, score {score_s:.3f} s)"
    )


def report(
    args: argparse.Namespace,
    config: TrainConfig,
    *,
    files: list[Path],
    model: Counts,
    baseline: Counts,
    free: Result,
    free_rows: int,
) -> None:
    """Print the pooled figures."""
    readings = model.tp + model.fp + model.fn + model.tn
    positives = model.tp + model.fn
    everything = Counts(tp=positives, fp=readings - positives)
    print(
        f"SKAB valve1: {len(files)} files, {readings} test readings ({positives / readings:.1%} "
        f"anomalous), fit on the first {args.train_rows} readings of each file"
    )
    print(f"model: {config}")
    print(model.line("PCA T²/k+Q/θ (ONNX runtime)"))
    print(baseline.line(f"z-score max > {args.z:g}"))
    print(everything.line("flag every reading"))
    print(f"F1 ratio model / z-score baseline: {_ratio(model.f1(), baseline.f1()):.3f}")
    print(
        f"anomaly-free.csv ({free_rows - args.train_rows} readings after the first "
        f"{args.train_rows}): FAR model {free.model.mean():.1%}, "
        f"z-score baseline {free.baseline.mean():.1%}"
    )


if __name__ == "__main__":
    main()
