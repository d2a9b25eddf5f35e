"""SKAB valve1 through the real exporter and the real edge runtime, per detector family.

Protocol (SKAB's outlier problem): per file, fit on the first 400 readings, score the rest, pool
TP/FP/FN/TN over files; F1 = TP / (TP + (FP + FN) / 2). Each file's model is trained by
``train_model`` (the hub's code), saved, loaded by the node's ``ModelRuntime`` (onnxruntime),
fed block by block, and flagged by the model's alarm rule exactly as a node does. Measured in
the same run for reference: a z-score baseline, flagging every reading, the int8 twin of the
default, SKAB's changepoint (NAB) score of alarm openings, and false alarms on anomaly-free.csv
(whole, and cut into recordings of SKAB's length). The headline, cross-validated figure is
bench/skab_cv.py's; this one uses the shipped defaults on all 16 files.

    .venv/bin/python bench/skab_f1.py [--skab-dir DIR] [--algorithm pca ...] [--per-file]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.skab import DEFAULT_DIR, Recording, load, nab_score, valve1
from cloud_hub.models.onnx_export import int8_variant, save_model, train_model
from cloud_hub.models.trainer import ALGORITHMS, DEFAULTS, sliding_windows
from cloud_hub.models.validation import Counts, Labelled
from edge_node.scoring.runtime import ModelRuntime
from schemas.alarm import AlarmFilter, openings
from schemas.manifest import Manifest

TRAIN_ROWS = 400
BLOCK = 37  # odd-sized blocks: the alarm state must carry across block edges
BoolArray = NDArray[np.bool_]
NO_CPS = np.zeros(0, dtype=np.int64)


def node_flags(folder: Path, manifest: Manifest, values: NDArray[np.float32]) -> BoolArray:
    """Flags of the test readings as a node raises them: runtime scores, alarm per block."""
    runtime = ModelRuntime.load(folder, sensors=manifest.input.channels)
    window = manifest.input.window
    windows = sliding_windows(values[TRAIN_ROWS - window + 1 :], window)
    alarm = AlarmFilter(manifest.alarm)
    flags = []
    for start in range(0, len(windows), BLOCK):
        scores, _ = runtime.score(windows[start : start + BLOCK])
        flags.append(alarm.update(np.isfinite(scores) & (scores > manifest.threshold)))
    return np.concatenate(flags)


def train(recording: Recording, algorithm: str, folder: Path) -> tuple[bytes, Manifest]:
    """The file's model from its first 400 readings, saved into ``folder``."""
    onnx_bytes, manifest = train_model(
        recording.labelled.values[:TRAIN_ROWS],
        recording.channels,
        name="skab",
        version="1",
        trained_by="bench/skab_f1.py",
        config=DEFAULTS[algorithm],  # type: ignore[index]
        now=time.time(),
    )
    save_model(folder, onnx_bytes, manifest)
    return onnx_bytes, manifest


def zscore_flags(values: NDArray[np.float32], z: float = 3.0, window: int = 16) -> BoolArray:
    """Baseline: any channel's window mean more than ``z`` training SDs from its training mean."""
    reference = sliding_windows(values[:TRAIN_ROWS], window).astype(np.float64).mean(axis=1)
    test = sliding_windows(values[TRAIN_ROWS - window + 1 :], window).astype(np.float64)
    deviation = np.abs(test.mean(axis=1) - reference.mean(axis=0)) / reference.std(axis=0)
    flags: BoolArray = deviation.max(axis=1) > z
    return flags


def line(label: str, counts: Counts) -> str:
    """One printed row."""
    return (
        f"{label:<34} F1 {counts.f1():.3f}  FAR {counts.far():6.1%}  MAR {counts.mar():6.1%}  "
        f"(TP {counts.tp}, FP {counts.fp}, FN {counts.fn}, TN {counts.tn})"
    )


def family(recordings: list[Recording], algorithm: str, tmp: Path, per_file: bool) -> None:
    """Score every file with the family's default recipe; int8 and NAB for the default."""
    total, total_int8 = Counts(), Counts()
    flags_by_file = []
    latency, size, latency8, size8 = [], [], [], []
    for recording in recordings:
        labels = recording.labelled.anomaly[TRAIN_ROWS:]
        folder = tmp / algorithm / recording.labelled.name
        onnx_bytes, manifest = train(recording, algorithm, folder)
        values = np.asarray(recording.labelled.values, dtype=np.float32)
        flags = node_flags(folder, manifest, values)
        flags_by_file.append(flags)
        single = Counts().add(flags, labels)
        total += single
        latency.append(manifest.resources.latency_ms_p50 / manifest.resources.measured_batch)
        size.append(manifest.resources.size_bytes)
        if per_file:
            print(line(f"  {recording.labelled.name} ({len(openings(flags))} alarms)", single))
        if algorithm == "pca":
            quantized, twin = int8_variant(onnx_bytes, manifest)
            twin_folder = folder.with_name(folder.name + "-int8")
            save_model(twin_folder, quantized, twin)
            total_int8.add(node_flags(twin_folder, twin, values), labels)
            latency8.append(twin.resources.latency_ms_p50 / twin.resources.measured_batch)
            size8.append(twin.resources.size_bytes)
    us = 1000 * float(np.median(latency))
    cost = f"  {us:.2f} us/reading, {int(np.median(size))} B"
    print(line(f"{algorithm} (runtime + alarm rule)", total) + cost)
    if algorithm == "pca":
        us8 = 1000 * float(np.median(latency8))
        cost8 = f"  {us8:.2f} us/reading, {int(np.median(size8))} B"
        print(line("pca int8 twin", total_int8) + cost8)
        print(
            f"int8 / fp32: latency {us8 / us:.2f}x, "
            f"size {np.median(size8) / np.median(size):.2f}x, "
            f"F1 {total_int8.f1() - total.f1():+.3f}, FAR {total_int8.far() - total.far():+.1%}"
        )
        nab = nab_score(recordings, flags_by_file, TRAIN_ROWS)
        print(f"NAB standard score of the alarm openings: {nab:.2f} (null detector 0, perfect 100)")


def healthy_far(free: Recording, algorithm: str, tmp: Path) -> str:
    """False alarms on anomaly-free.csv: whole (hours after 400 s of training) and in pieces."""
    whole = Counts()
    folder = tmp / f"free-{algorithm}"
    _, manifest = train(free, algorithm, folder)
    values = np.asarray(free.labelled.values, dtype=np.float32)
    whole.add(node_flags(folder, manifest, values), free.labelled.anomaly[TRAIN_ROWS:])
    pieces = Counts()
    for start in range(0, len(values) - 1150 + 1, 1150):
        piece = values[start : start + 1150]
        part = Recording(Labelled("piece", piece, np.zeros(1150, bool)), free.channels, NO_CPS)
        _, piece_manifest = train(part, algorithm, folder)
        pieces.add(node_flags(folder, piece_manifest, piece), np.zeros(1150 - TRAIN_ROWS, bool))
    return (
        f"anomaly-free.csv, {algorithm}: FAR {whole.far():.1%} over the {whole.readings} readings "
        f"after the first 400 ({whole.readings / 3600:.1f} h); FAR {pieces.far():.1%} in "
        f"{len(values) // 1150} recordings of 1150 readings"
    )


def main() -> None:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skab-dir", type=Path, default=DEFAULT_DIR)
    parser.add_argument("--algorithm", nargs="+", choices=ALGORITHMS, default=list(ALGORITHMS))
    parser.add_argument("--per-file", action="store_true", help="print each file's counts")
    args = parser.parse_args()
    recordings = valve1(args.skab_dir)
    began = time.perf_counter()
    labels = np.concatenate([r.labelled.anomaly[TRAIN_ROWS:] for r in recordings])
    print(
        f"SKAB valve1: {len(recordings)} files, {labels.size} test readings "
        f"({labels.mean():.1%} anomalous); fit on the first {TRAIN_ROWS} readings of each"
    )
    baseline = Counts()
    for recording in recordings:
        values = np.asarray(recording.labelled.values, dtype=np.float32)
        baseline.add(zscore_flags(values), recording.labelled.anomaly[TRAIN_ROWS:])
    print(line("flag every reading", Counts(tp=int(labels.sum()), fp=int((~labels).sum()))))
    print(line("z-score baseline (W16, 3 SD)", baseline))
    free = load(args.skab_dir / "anomaly-free" / "anomaly-free.csv", healthy=True)
    with tempfile.TemporaryDirectory(prefix="skab-bench-") as tmp:
        for algorithm in args.algorithm:
            family(recordings, algorithm, Path(tmp), args.per_file)
        for algorithm in args.algorithm:
            print(healthy_far(free, algorithm, Path(tmp)))
    print(f"wall time {time.perf_counter() - began:.0f} s")


if __name__ == "__main__":
    main()
