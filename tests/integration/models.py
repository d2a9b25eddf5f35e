"""Model folders for lifecycle tests: trained on SKAB data, and deliberately broken variants."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import msgspec
import numpy as np
import onnx
from onnx import helper, numpy_helper

from cloud_hub.models.onnx_export import save_model, train_model
from cloud_hub.models.trainer import TrainConfig
from edge_node.sources.simulator import PumpSimulator
from schemas.manifest import Manifest, decode_manifest
from schemas.readings_csv import read_csv, write_csv
from tests.skab import skab_file


def train(folder: Path, version: str, rows: slice, window: int = 8) -> Path:
    """Train ``pump-pca@version`` on rows of the healthy SKAB recording into ``folder``."""
    healthy = read_csv(skab_file("anomaly-free/anomaly-free.csv"))
    onnx_bytes, manifest = train_model(
        healthy.values[rows],
        healthy.channels,
        name="pump-pca",
        version=version,
        trained_by="tests",
        config=TrainConfig(window=window),
        now=time.time(),
    )
    save_model(folder, onnx_bytes, manifest)
    return folder


def _rewrite(
    source: Path, folder: Path, version: str, proto: onnx.ModelProto, **manifest_changes: object
) -> Path:
    data = proto.SerializeToString()
    manifest = decode_manifest((source / "manifest.json").read_bytes())
    resources = msgspec.structs.replace(manifest.resources, size_bytes=len(data))
    changed: Manifest = msgspec.structs.replace(
        manifest,
        version=version,
        sha256=hashlib.sha256(data).hexdigest(),
        resources=resources,
        **manifest_changes,
    )
    save_model(folder, data, changed)
    return folder


def padded(source: Path, folder: Path, version: str, size: int) -> Path:
    """The same model carrying an unused ``size``-byte constant: an artifact of about ``size``."""
    proto = onnx.load_from_string((source / "model.onnx").read_bytes())
    pad = np.random.default_rng(0).random(size // 4, dtype=np.float32)
    proto.graph.initializer.append(numpy_helper.from_array(pad, "padding"))
    return _rewrite(source, folder, version, proto)


def with_threshold(source: Path, folder: Path, version: str, threshold: float) -> Path:
    """The same model under another version with another threshold (a tiny one flags all)."""
    proto = onnx.load_from_string((source / "model.onnx").read_bytes())
    return _rewrite(source, folder, version, proto, threshold=threshold)


def nan_on_real_data(source: Path, folder: Path, version: str) -> Path:
    """Loads and warms up fine (warm-up windows are constant, so every channel's spread is 0)
    but scores NaN as soon as a window's readings vary, as real readings always do."""
    proto = onnx.load_from_string((source / "model.onnx").read_bytes())
    graph = proto.graph
    score = graph.output[0].name
    graph.initializer.extend(
        [
            numpy_helper.from_array(np.array(0.0, np.float32), "zero"),
            numpy_helper.from_array(np.array([1, 2], np.int64), "axes_wc"),
        ]
    )
    for node in graph.node:  # rename the score so the new tail produces it
        node.output[:] = ["raw_score" if o == score else o for o in node.output]
        node.input[:] = ["raw_score" if i == score else i for i in node.input]
    graph.node.extend(
        [
            # feat_spread [B, 1, C] is the features' per-channel window spread (>= 0).
            helper.make_node("ReduceSum", ["feat_spread", "axes_wc"], ["spread"], keepdims=0),
            helper.make_node("Neg", ["spread"], ["minus_spread"]),
            helper.make_node("Sqrt", ["minus_spread"], ["poison"]),  # NaN once spread > 0
            helper.make_node("Mul", ["poison", "zero"], ["nothing_or_nan"]),
            helper.make_node("Add", ["raw_score", "nothing_or_nan"], [score]),
        ]
    )
    onnx.checker.check_model(proto)
    return _rewrite(source, folder, version, proto)


def wrong_window(folder: Path, version: str) -> Path:
    """A graph built for windows of 4 readings whose manifest claims 8."""
    train(folder, version, slice(0, 3000), window=4)
    manifest = decode_manifest((folder / "manifest.json").read_bytes())
    source_input = msgspec.structs.replace(manifest.input, window=8)
    proto = onnx.load_from_string((folder / "model.onnx").read_bytes())
    return _rewrite(folder, folder, version, proto, input=source_input)


def sim_model(folder: Path, rate_hz: float = 20) -> Path:
    """``pump-pca@1`` trained on simulated healthy readings, like simulated nodes produce
    (at ``rate_hz``: the simulated pump's readings depend on the rate)."""
    sim = PumpSimulator(
        seed=11, rate_hz=rate_hz, speed=0, wall_start=0.0, faults=[], max_block=4096
    )
    onnx_bytes, manifest = train_model(
        sim.read(6000).values,
        sim.channels,
        name="pump-pca",
        version="1",
        trained_by="tests",
        config=TrainConfig(),
        now=time.time(),
    )
    save_model(folder, onnx_bytes, manifest)
    return folder


def sim_model_with_reference(work: Path, rate_hz: float) -> tuple[Path, Path]:
    """``pump-pca@1`` trained on one whole load cycle of a healthy simulated pump (24,000
    readings at 20 Hz: shorter ones miss how the other pumps' phases look), and the second
    half of those readings as a CSV: the healthy reference the retrain loop compares against."""
    sim = PumpSimulator(seed=11, rate_hz=rate_hz, speed=0, wall_start=0.0, max_block=4096)
    values = sim.read(24000).values
    onnx_bytes, manifest = train_model(
        values,
        sim.channels,
        name="pump-pca",
        version="1",
        trained_by="tests",
        config=TrainConfig(),
        now=time.time(),
        period_s=1 / rate_hz,
    )
    save_model(work / "v1", onnx_bytes, manifest)
    write_csv(work / "healthy.csv", sim.channels, 0.0, 1 / rate_hz, values[12000:])
    return work / "v1", work / "healthy.csv"


def retuned(source: Path, folder: Path, version: str, threshold_factor: float = 1.0) -> Path:
    """The same graph as a new version, its threshold multiplied by ``threshold_factor``
    (below 1: a model that flags far more readings than ``source``)."""
    manifest = decode_manifest((source / "manifest.json").read_bytes())
    proto = onnx.load_from_string((source / "model.onnx").read_bytes())
    threshold = manifest.threshold * threshold_factor
    return _rewrite(source, folder, version, proto, threshold=threshold)
