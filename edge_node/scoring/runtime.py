"""The node's ONNX model runtime: load, check and warm a model folder, then score windows.

The only edge module that imports onnxruntime. It holds one model; switching between models
(keeping the old one until the new one has loaded) is the caller's job.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import NDArray
from onnxruntime.capi import onnxruntime_pybind11_state as ort_state

from schemas.manifest import MANIFEST_FILE, MODEL_FILE, Manifest, decode_manifest
from schemas.messages import ModelRef

log = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 1024
# Model file bytes and their folder -> the ONNX bytes (edge_node.lifecycle.sealing.ModelSeal).
Opener = Callable[[bytes, Path], bytes]
_FLOAT = "tensor(float)"
_WARMUP_ROWS = 2
# onnxruntime's errors derive from Exception directly, not from RuntimeError.
_ORT_ERRORS: tuple[type[BaseException], ...] = (
    ort_state.Fail,
    ort_state.InvalidArgument,
    ort_state.InvalidGraph,
    ort_state.InvalidProtobuf,
    ort_state.NoSuchFile,
    ort_state.NotImplemented,
    ort_state.RuntimeException,
    RuntimeError,
)

F32 = NDArray[np.float32]


class ModelError(Exception):
    """A model cannot be loaded or run; the message names the problem."""


class ModelRuntime:
    """One loaded, checked and warmed-up model."""

    def __init__(
        self, manifest: Manifest, session: Any, *, batched: bool, max_batch: int = DEFAULT_MAX_BATCH
    ) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.manifest = manifest
        self.ref = ModelRef(manifest.name, manifest.version)
        self.warmup_ms = 0.0
        self._session = session
        self._batched = batched
        self._max_batch = max_batch if batched else 1
        self._outputs = [manifest.output.score]
        if manifest.output.contributions is not None:
            self._outputs.append(manifest.output.contributions)

    @classmethod
    def load(
        cls,
        model_dir: Path,
        *,
        sensors: list[str] | None = None,
        threads: int = 1,
        max_batch: int = DEFAULT_MAX_BATCH,
        opener: Opener | None = None,
    ) -> ModelRuntime:
        """Read, verify, check and warm up the model in ``model_dir``; ModelError if unfit.

        ``opener`` turns the file's bytes into the model's (decryption at rest); it raises
        ValueError with the reason when it cannot.
        """
        manifest, onnx_bytes = _read_folder(model_dir, opener)
        missing = [c for c in manifest.input.channels if sensors is not None and c not in sensors]
        if missing:
            raise ModelError(
                f"the model needs channels {missing} that the node's sensors {sensors} lack"
            )
        session = _open_session(onnx_bytes, threads)
        batched = _check_input(session, manifest)
        _check_outputs(session, manifest)
        runtime = cls(manifest, session, batched=batched, max_batch=max_batch)
        runtime._warm_up()
        log.info(
            "loaded model %s/%s (warm-up %.2f ms)",
            runtime.ref.name,
            runtime.ref.version,
            runtime.warmup_ms,
        )
        return runtime

    @property
    def channels(self) -> list[str]:
        """Channel order of the model's input."""
        return self.manifest.input.channels

    @property
    def window(self) -> int:
        """Readings per window."""
        return self.manifest.input.window

    def score(self, windows: NDArray[np.floating]) -> tuple[F32, F32 | None]:
        """Scores ``[n]`` and, if the model has them, contributions ``[n, C]`` of raw windows."""
        x = np.ascontiguousarray(windows, dtype=np.float32)
        expected = (self.window, len(self.channels))
        if x.ndim != 3 or x.shape[1:] != expected:
            raise ValueError(
                f"windows have shape {list(x.shape)}, model {self.ref.name}/{self.ref.version} "
                f"expects [n, {expected[0]}, {expected[1]}]"
            )
        parts = [self._run(x[i : i + self._max_batch]) for i in range(0, len(x), self._max_batch)]
        if not parts:
            empty = np.zeros((0, expected[1]), dtype=np.float32)
            return np.zeros(0, dtype=np.float32), empty if len(self._outputs) > 1 else None
        if len(parts) == 1:  # a block within max_batch (the usual case): no copy
            return parts[0][0], parts[0][1] if len(self._outputs) > 1 else None
        scores = np.concatenate([p[0] for p in parts])
        if len(self._outputs) == 1:
            return scores, None
        return scores, np.concatenate([p[1] for p in parts])

    def _run(self, chunk: F32) -> list[F32]:
        name = self.manifest.input.name
        try:
            out = self._session.run(self._outputs, {name: chunk})
        except _ORT_ERRORS as exc:
            raise ModelError(f"inference failed: {exc}") from exc
        n, channels = len(chunk), len(self.channels)
        shapes = [(n,), (n, channels)]
        result = []
        for label, value, shape in zip(self._outputs, out, shapes, strict=False):
            array = np.asarray(value, dtype=np.float32)
            if array.shape != shape:
                raise ModelError(
                    f"output '{label}' has shape {list(array.shape)} for a batch of {n}, "
                    f"expected {list(shape)}"
                )
            result.append(array)
        return result

    def _warm_up(self) -> None:
        profiles = self.manifest.reference.channels
        missing = [c for c in self.channels if c not in profiles]
        if missing:
            raise ModelError(f"manifest reference has no profile for channels {missing}")
        mean = np.array([profiles[c].mean for c in self.channels], dtype=np.float32)
        rows = _WARMUP_ROWS if self._batched else 1
        x = np.broadcast_to(mean, (rows, self.window, len(self.channels)))
        start = time.perf_counter()
        scores, contributions = self.score(x)
        self.warmup_ms = (time.perf_counter() - start) * 1000.0
        if not np.all(np.isfinite(scores)):
            raise ModelError(f"warm-up produced NaN scores: {scores.tolist()}")
        if contributions is not None and not np.all(np.isfinite(contributions)):
            raise ModelError("warm-up produced NaN contributions")


def _read_folder(model_dir: Path, opener: Opener | None = None) -> tuple[Manifest, bytes]:
    try:
        manifest_bytes = (model_dir / MANIFEST_FILE).read_bytes()
        onnx_bytes = (model_dir / MODEL_FILE).read_bytes()
    except OSError as exc:
        raise ModelError(f"load failed: {exc}") from exc
    if opener is not None:
        try:
            onnx_bytes = opener(onnx_bytes, model_dir)
        except ValueError as exc:
            raise ModelError(f"load failed: {exc}") from None
    try:
        manifest = decode_manifest(manifest_bytes, source=str(model_dir / MANIFEST_FILE))
    except ValueError as exc:
        raise ModelError(f"load failed: {exc}") from exc
    digest = hashlib.sha256(onnx_bytes).hexdigest()
    if digest != manifest.sha256:
        raise ModelError(
            f"load failed: sha256 of {model_dir / MODEL_FILE} is {digest}, "
            f"manifest says {manifest.sha256}"
        )
    return manifest, onnx_bytes


def _open_session(onnx_bytes: bytes, threads: int) -> Any:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # No arena: it keeps the largest batch's buffers for good (~1 MB at 1,024 windows), and
    # a node's tensors are small enough that plain allocation costs nothing measurable.
    options.enable_cpu_mem_arena = False
    options.log_severity_level = 3  # errors only: warnings about the graph are ours to check
    try:
        return ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    except _ORT_ERRORS as exc:
        raise ModelError(f"load failed: {exc}") from exc


def _check_input(session: Any, manifest: Manifest) -> bool:
    """Check the graph's input against the manifest; True if it takes a dynamic batch."""
    spec = manifest.input
    inputs = session.get_inputs()
    names = [i.name for i in inputs]
    if names != [spec.name]:
        raise ModelError(f"graph inputs are {names}, manifest says ['{spec.name}']")
    shape = list(inputs[0].shape)
    batch_dim = "batch" if spec.dynamic_batch else 1
    wanted = [batch_dim, spec.window, len(spec.channels)]
    dynamic = len(shape) == 3 and not isinstance(shape[0], int)
    if len(shape) != 3 or shape[1:] != wanted[1:] or (not dynamic and shape[0] != 1):
        raise ModelError(f"input '{spec.name}' has shape {shape}, manifest says {wanted}")
    if dynamic != spec.dynamic_batch:
        raise ModelError(f"input '{spec.name}' has shape {shape}, manifest says {wanted}")
    if inputs[0].type != _FLOAT:
        raise ModelError(f"input '{spec.name}' has type {inputs[0].type}, manifest says float32")
    return dynamic


def _check_outputs(session: Any, manifest: Manifest) -> None:
    outputs = {o.name: o for o in session.get_outputs()}
    channels = len(manifest.input.channels)
    wanted = [(manifest.output.score, 1)]
    if manifest.output.contributions is not None:
        wanted.append((manifest.output.contributions, 2))
    for name, rank in wanted:
        if name not in outputs:
            raise ModelError(f"output '{name}' missing; graph outputs are {sorted(outputs)}")
        shape, kind = list(outputs[name].shape), outputs[name].type
        # A symbolic channel dimension is allowed; run() checks the actual shape.
        fixed = rank == 2 and len(shape) == 2 and isinstance(shape[1], int)
        if len(shape) != rank or (fixed and shape[1] != channels):
            expected = ["batch", channels][:rank]
            raise ModelError(f"output '{name}' has shape {shape}, manifest implies {expected}")
        if kind != _FLOAT:
            raise ModelError(f"output '{name}' has type {kind}, expected float32")


def runtime_info() -> tuple[str, int]:
    """(onnxruntime version, newest ONNX opset that has a kernel in this runtime)."""
    newest = 0
    for kernel in ort_state.get_all_opkernel_def():
        if kernel.domain in ("", "ai.onnx"):
            first, last = kernel.version_range
            newest = max(newest, first if last >= 1000 else last)
    return str(ort.__version__), newest
