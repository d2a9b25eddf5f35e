"""SKAB recordings for the benchmarks, and SKAB's changepoint (NAB) score.

The data are read where they lie (``--skab-dir``, ``SKAB_DIR`` or ``../shared/data/skab``
beside the repository); nothing is copied.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from cloud_hub.models.onnx_export import save_model, train_model
from cloud_hub.models.trainer import TrainConfig
from cloud_hub.models.validation import Labelled
from schemas.alarm import openings
from schemas.manifest import Manifest
from schemas.readings_csv import read_csv

DEFAULT_DIR = Path(
    os.environ.get("SKAB_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "skab")
)
BoolArray = NDArray[np.bool_]


@dataclass(frozen=True)
class Recording:
    """One SKAB experiment: its labelled readings and its changepoints."""

    labelled: Labelled
    channels: list[str]
    changepoints: NDArray[np.int64]  # row indexes


def load(path: Path, healthy: bool = False) -> Recording:
    """Read one SKAB file; changepoints from its ``changepoint`` column. Labels are required
    unless the file is ``healthy`` (every reading normal)."""
    data = read_csv(path)
    if data.anomaly is None:
        if not healthy:
            raise SystemExit(f"{path}: no anomaly column")
        data = replace(data, anomaly=np.zeros(len(data.values), dtype=bool))
    assert data.anomaly is not None
    changepoints = _changepoints(path)
    return Recording(Labelled(path.name, data.values, data.anomaly), data.channels, changepoints)


def valve1(skab_dir: Path) -> list[Recording]:
    """The valve1 experiments in numeric order."""
    paths = sorted((skab_dir / "valve1").glob("*.csv"), key=lambda p: int(p.stem))
    if not paths:
        raise SystemExit(f"no SKAB valve1 files under {skab_dir} (set --skab-dir or SKAB_DIR)")
    return [load(p) for p in paths]


def valve1_readings(skab_dir: Path) -> NDArray[np.float32]:
    """Every valve1 recording's readings, in file order, as one float32 array (no labels)."""
    files = sorted((skab_dir / "valve1").glob("*.csv"), key=lambda p: int(p.stem))
    return np.concatenate([read_csv(f).values for f in files]).astype(np.float32)


def healthy_model(skab_dir: Path, folder: Path) -> Manifest:
    """A default model trained on the first 3,000 anomaly-free readings, saved in ``folder``."""
    healthy = read_csv(skab_dir / "anomaly-free" / "anomaly-free.csv")
    onnx, manifest = train_model(
        healthy.values[:3000],
        healthy.channels,
        name="bench",
        version="1",
        trained_by="bench",
        config=TrainConfig(),
        now=time.time(),
    )
    save_model(folder, onnx, manifest)
    return manifest


def nab_score(
    recordings: list[Recording], flags: list[BoolArray], train_rows: int, window: int = 60
) -> float:
    """SKAB's changepoint score, NAB standard profile (A_tp 1, A_fp -0.11, A_fn -1).

    Detections are alarm openings. Each changepoint in the scored part has the window
    ``[cp, cp + window]`` readings to its right; the first detection in it scores the scaled
    sigmoid of its position (1 at the changepoint, 0 at the window's end), a window without one
    costs 1, and every detection outside all windows costs 0.11. Normalised to
    ``100 (S - S_null) / (S_perfect - S_null)`` (null: no detections).
    """

    def sigmoid(y: float) -> float:
        return float(2.0 / (1.0 + np.exp(5.0 * y)) - 1.0)

    score = null = perfect = 0.0
    for recording, flagged in zip(recordings, flags, strict=True):
        detections = openings(flagged) + train_rows
        changepoints = recording.changepoints[recording.changepoints >= train_rows]
        inside = np.zeros(detections.size, dtype=bool)
        for cp in changepoints:
            hit = (detections >= cp) & (detections <= cp + window)
            inside |= hit
            null -= 1.0
            perfect += sigmoid(-1.0)
            if hit.any():
                score += sigmoid((int(detections[hit][0]) - (cp + window)) / window)
            else:
                score -= 1.0
        score -= 0.11 * float(np.sum(~inside))
    return 100.0 * (score - null) / (perfect - null)


def _changepoints(path: Path) -> NDArray[np.int64]:
    header = path.read_text(encoding="utf-8").splitlines()[0].split(";")
    names = [h.strip().lower() for h in header]
    if "changepoint" not in names:
        return np.zeros(0, dtype=np.int64)
    column = np.genfromtxt(path, delimiter=";", skip_header=1, usecols=[names.index("changepoint")])
    return np.flatnonzero(np.nan_to_num(column) > 0.5).astype(np.int64)
