"""Export a fitted detector to ONNX, measure it, and write the model folder.

The graph builders of features and detectors sit beside their numpy code; this module puts the
graph together and is the only hub module that runs it (onnxruntime: export check, measurement,
int8 quantisation).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import onnx
import onnxruntime as ort
import psutil
from numpy.typing import NDArray
from onnx import TensorProto, helper, numpy_helper

from cloud_hub.models.features import onnx_nodes as feature_nodes
from cloud_hub.models.reference import drift_spec, reference_profile, sensor_specs
from cloud_hub.models.trainer import FittedModel, TrainConfig, fit, score_numpy, sliding_windows
from schemas.drift import DriftSpec
from schemas.files import atomic_write
from schemas.fit import Needs
from schemas.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    InputSpec,
    Manifest,
    ModelCard,
    OutputSpec,
    Resources,
    TrainingData,
    Validation,
    encode_manifest,
)

log = logging.getLogger(__name__)

SCORE = "score"
CONTRIBUTIONS = "contributions"
# ReduceSum and Squeeze take their axes as an input from opset 13.
MIN_OPSET = 13
_CHECK_RTOL = 1e-3
_CHECK_ATOL = 1e-4
_MB = 1024 * 1024
# Watts of one busy core of the reference board (Raspberry Pi 4 B: 2.7 W idle, 6.4 W with its
# four cores busy), the same figure the node's power estimate uses by default.
PER_CORE_W = (6.4 - 2.7) / 4


def build_onnx(model: FittedModel, *, input_name: str = "window", opset: int = 17) -> bytes:
    """Scoring graph of ``model``: raw windows ``[batch, W, C]`` in, score and contributions out."""
    if opset < MIN_OPSET:
        raise ValueError(f"opset {opset} is not supported; need >= {MIN_OPSET}")
    nodes, inits = feature_nodes(model.spec, input_name, "z", opset)
    detector_nodes, detector_inits = model.detector.onnx_nodes("z", SCORE, "terms")
    nodes += [
        *detector_nodes,
        helper.make_node("MatMul", ["terms", "owner"], [CONTRIBUTIONS]),
    ]
    inits += [*detector_inits, numpy_helper.from_array(model.spec.owner_matrix(), "owner")]
    c = len(model.channels)
    graph = helper.make_graph(
        nodes,
        f"edgeml-{model.config.algorithm}",
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
    sources: list[str] | None = None,
    period_s: float | None = None,
    validation: Validation | None = None,
) -> tuple[bytes, Manifest]:
    """Fit, export, check the export against numpy, measure, and describe: (onnx, manifest)."""
    model = fit(values, channels, config)
    onnx_bytes = build_onnx(model)
    windows = sliding_windows(np.asarray(values, dtype=np.float32), model.window)
    scores, _ = score_numpy(model, windows)
    _check_export(onnx_bytes, windows, scores)
    resources = measure(onnx_bytes, model.window, len(channels))
    reference = reference_profile(values, scores, list(channels))
    manifest = Manifest(
        name=name,
        version=version,
        created_at=now,
        trained_by=trained_by,
        algorithm=config.algorithm,
        input=InputSpec(name="window", channels=list(channels), window=model.window),
        output=OutputSpec(score=SCORE, contributions=CONTRIBUTIONS),
        threshold=model.threshold,
        reference=reference,
        resources=resources,
        sha256=hashlib.sha256(onnx_bytes).hexdigest(),
        training=_training_facts(model),
        alarm=config.alarm,
        needs=_needs(resources, list(channels), period_s),
        # The drift thresholds need the readings' period: fitted when it is known.
        drift=drift_spec(values, scores, reference, list(channels), period_s)
        if period_s
        else DriftSpec(),
        sensors=sensor_specs(values, list(channels), period_s),
        card=ModelCard(
            features=model.feature_names(),
            threshold_rule=config.threshold_rule(),
            training=TrainingData(readings=len(values), sources=sources or [], period_s=period_s),
            latency_us_per_reading=_per_reading_us(resources),
            memory_mb=resources.memory_mb,
            size_bytes=resources.size_bytes,
            validation=validation,
        ),
    )
    log.info(
        "trained %s/%s (%s): %d readings, threshold %.4g",
        name,
        version,
        config.algorithm,
        len(values),
        model.threshold,
    )
    return onnx_bytes, manifest


def _needs(resources: Resources, channels: list[str], period_s: float | None) -> Needs:
    """Memory as measured; power as the CPU time per reading at the training data's rate (1/s
    if unknown) times the watts of one busy core of the reference board."""
    rate = 1.0 / period_s if period_s else 1.0
    busy = _per_reading_us(resources) * 1e-6 * rate
    return Needs(
        memory_mb=resources.memory_mb,
        power_w=round(busy * PER_CORE_W, 6),
        opset=resources.opset,
        channels=channels,
    )


def _training_facts(model: FittedModel) -> dict[str, float | int | str]:
    config = model.config
    return {
        "windows": model.training_windows,
        "features": config.features,
        "drift_limit": config.drift_limit,
        "target_far": config.target_far,
        "margin": config.margin,
        "holdout": config.holdout,
        **model.detector.facts(),
    }


def _per_reading_us(resources: Resources) -> float:
    return round(resources.latency_ms_p50 * 1000.0 / resources.measured_batch, 3)


def int8_variant(onnx_bytes: bytes, manifest: Manifest) -> tuple[bytes, Manifest]:
    """The model with int8 weights (onnxruntime dynamic quantisation), re-measured, as version
    ``<version>-int8``; its threshold and alarm stay those of the fp32 model."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    root, hint = logging.getLogger(), _QuantiserChatter()
    root.addFilter(hint)
    try:
        with tempfile.TemporaryDirectory() as tmp:
            source, target = Path(tmp, "fp32.onnx"), Path(tmp, "int8.onnx")
            source.write_bytes(onnx_bytes)
            quantize_dynamic(source, target, weight_type=QuantType.QInt8)
            quantized = target.read_bytes()
    finally:
        root.removeFilter(hint)
    resources = measure(quantized, manifest.input.window, len(manifest.input.channels))
    card = manifest.card
    if card is not None:
        card = msgspec.structs.replace(
            card,
            precision="int8",
            latency_us_per_reading=_per_reading_us(resources),
            memory_mb=resources.memory_mb,
            size_bytes=resources.size_bytes,
            validation=None,  # measured for fp32; the int8 figure is bench/skab_f1.py's
        )
    variant = msgspec.structs.replace(
        manifest,
        version=f"{manifest.version}-int8",
        resources=resources,
        sha256=hashlib.sha256(quantized).hexdigest(),
        card=card,
    )
    return quantized, variant


class _QuantiserChatter(logging.Filter):
    """Drops what onnxruntime's quantiser logs on the root logger (advice on pre-processing,
    each tensor it leaves alone): none of it is news about the model."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "onnxruntime" not in record.pathname or "quantization" not in record.pathname


def save_model(directory: Path, onnx_bytes: bytes, manifest: Manifest) -> None:
    """Write ``model.onnx`` then ``manifest.json`` into ``directory``, each atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    atomic_write(directory / MODEL_FILE, onnx_bytes)
    atomic_write(directory / MANIFEST_FILE, encode_manifest(manifest))


def score_readings(
    onnx_bytes: bytes, manifest: Manifest, values: NDArray[np.floating], batch: int = 2048
) -> NDArray[np.float32]:
    """The score a node running this artifact gives each window of ``values`` ``[n, C]`` (one
    per reading from the ``window``-th on), in batches of ``batch`` windows."""
    window = manifest.input.window
    windows = sliding_windows(np.asarray(values, dtype=np.float32), window)
    session = _session(onnx_bytes)
    name = session.get_inputs()[0].name
    parts = [
        session.run([manifest.output.score], {name: windows[i : i + batch]})[0]
        for i in range(0, len(windows), batch)
    ]
    return np.concatenate(parts).astype(np.float32) if parts else np.zeros(0, np.float32)


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
