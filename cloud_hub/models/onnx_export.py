"""Export a fitted detector to ONNX, measure it, and write the model folder.

The only hub module that imports ``onnx`` (and, to measure, ``onnxruntime``).
"""

from __future__ import annotations

import hashlib
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import psutil
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from cloud_hub.models.trainer import (
    ALGORITHM,
    FittedModel,
    TrainConfig,
    fit,
    reference_profile,
    score_numpy,
    sliding_windows,
)
from schemas.files import atomic_write
from schemas.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    InputSpec,
    Manifest,
    OutputSpec,
    Resources,
    encode_manifest,
)

log = logging.getLogger(__name__)

SCORE = "score"
CONTRIBUTIONS = "contributions"
# ReduceSum takes its axes as an input from opset 13, ReduceMean only from opset 18.
MIN_OPSET = 13
_AXES_AS_INPUT_MEAN = 18
_CHECK_RTOL = 1e-3
_CHECK_ATOL = 1e-4
_MB = 1024 * 1024


def build_onnx(model: FittedModel, *, input_name: str = "window", opset: int = 17) -> bytes:
    """Scoring graph of ``model``: raw windows ``[batch, W, C]`` in, score and contributions out."""
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is not supported; need >= {MIN_OPSET}")
    c = len(model.channels)
    inits = [
        numpy_helper.from_array(model.mean.astype(np.float32), "mean"),
        numpy_helper.from_array(model.scale.astype(np.float32), "scale"),
        numpy_helper.from_array(model.root.astype(np.float32), "root"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
    ]
    nodes = [
        _reduce_mean(input_name, "window_mean", opset),
        helper.make_node("Sub", ["window_mean", "mean"], ["centred"]),
        helper.make_node("Div", ["centred", "scale"], ["z"]),
        helper.make_node("MatMul", ["z", "root"], ["y"]),
        helper.make_node("Mul", ["y", "y"], [CONTRIBUTIONS]),
        helper.make_node("ReduceSum", [CONTRIBUTIONS, "axis1"], [SCORE], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        ALGORITHM,
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", model.window, c])],
        [
            helper.make_tensor_value_info(SCORE, TensorProto.FLOAT, ["batch"]),
            helper.make_tensor_value_info(CONTRIBUTIONS, TensorProto.FLOAT, ["batch", c]),
        ],
        initializer=inits,
    )
    opsets = [helper.make_opsetid("", opset)]
    proto = helper.make_model(
        graph,
        opset_imports=opsets,
        producer_name="edgeml cloud_hub",
        # The oldest IR that carries this opset, so that older runtimes on nodes can load it.
        ir_version=helper.find_min_ir_version_for(opsets),
    )
    onnx.checker.check_model(proto, full_check=True)
    data: bytes = proto.SerializeToString()
    return data


def measure(
    onnx_bytes: bytes, window: int, channels: int, batch: int = 64, runs: int = 200
) -> Resources:
    """Latency per batch (p50/p99, ms), memory and size of a model, measured here and now.

    ``memory_mb`` is this process's resident-memory growth (psutil) from before the session
    was created to after the timed runs, but at least the model plus one batch's tensors. The
    first session in a process also pays onnxruntime's one-time set-up, so it errs high.
    """
    process = psutil.Process()
    rss_before = process.memory_info().rss
    session = _session(onnx_bytes)
    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch, window, channels)).astype(np.float32)
    feed = {session.get_inputs()[0].name: x}
    for _ in range(min(runs, 10)):
        session.run(None, feed)
    times = np.empty(runs)
    for i in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times[i] = (time.perf_counter() - start) * 1000.0
    growth = (process.memory_info().rss - rss_before) / _MB
    floor = (len(onnx_bytes) + x.nbytes * 2 + batch * channels * 4 * 6) / _MB
    return Resources(
        latency_ms_p50=float(np.percentile(times, 50)),
        latency_ms_p99=float(np.percentile(times, 99)),
        measured_batch=batch,
        memory_mb=round(max(growth, floor), 3),
        size_bytes=len(onnx_bytes),
        opset=_opset(onnx_bytes),
    )


def train_model(
    values: NDArray[np.floating],
    channels: list[str],
    *,
    name: str,
    version: str,
    trained_by: str,
    config: TrainConfig,
    now: float,
) -> tuple[bytes, Manifest]:
    """Fit, export, check the export against numpy, measure, and describe: (onnx, manifest)."""
    model = fit(values, channels, config)
    onnx_bytes = build_onnx(model)
    windows = sliding_windows(np.asarray(values, dtype=np.float32), model.window)
    scores, _ = score_numpy(model, windows)
    _check_export(onnx_bytes, windows, scores)
    manifest = Manifest(
        name=name,
        version=version,
        created_at=now,
        trained_by=trained_by,
        algorithm=ALGORITHM,
        input=InputSpec(name="window", channels=list(channels), window=model.window),
        output=OutputSpec(score=SCORE, contributions=CONTRIBUTIONS),
        threshold=model.threshold,
        reference=reference_profile(values, scores, list(channels)),
        resources=measure(onnx_bytes, model.window, len(channels)),
        sha256=hashlib.sha256(onnx_bytes).hexdigest(),
        training={
            "readings": len(values),
            "windows": model.training_windows,
            "components": model.components,
            "explained_variance": round(model.explained_variance, 6),
            "threshold_quantile": config.threshold_quantile,
            "threshold_margin": config.threshold_margin,
        },
    )
    log.info(
        "trained %s/%s: %d readings, %d components, threshold %.4g",
        name,
        version,
        len(values),
        model.components,
        model.threshold,
    )
    return onnx_bytes, manifest


def save_model(directory: Path, onnx_bytes: bytes, manifest: Manifest) -> None:
    """Write ``model.onnx`` then ``manifest.json`` into ``directory``, each atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / MODEL_FILE, onnx_bytes)
    atomic_write(directory / MANIFEST_FILE, encode_manifest(manifest))


def _reduce_mean(source: str, target: str, opset: int) -> onnx.NodeProto:
    if opset >= _AXES_AS_INPUT_MEAN:
        return helper.make_node("ReduceMean", [source, "axis1"], [target], keepdims=0)
    return helper.make_node("ReduceMean", [source], [target], axes=[1], keepdims=0)


def _session(onnx_bytes: bytes) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])


def _check_export(
    onnx_bytes: bytes, windows: NDArray[np.float32], expected: NDArray[np.float32]
) -> None:
    session = _session(onnx_bytes)
    scores = session.run([SCORE], {session.get_inputs()[0].name: windows})[0]
    if not np.allclose(scores, expected, rtol=_CHECK_RTOL, atol=_CHECK_ATOL):
        worst = float(np.max(np.abs(scores - expected)))
        raise RuntimeError(f"ONNX export disagrees with the numpy scorer (max difference {worst})")


def _opset(onnx_bytes: bytes) -> int:
    proto = onnx.load_from_string(onnx_bytes)
    return next(int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx"))
