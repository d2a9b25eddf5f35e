"""Train a candidate from a capture and compare it with the current model (catalog I/O).

Runs on the loop's worker thread with a catalog connection of its own. The candidate is the
current model's recipe fitted on the current model's healthy reference followed by the first
part of the capture: the new normal joins the old one. Trained on the capture alone, a
candidate flags the old normal (every drifted channel's level moved), so it could never pass
the reference check; see docs/ARCHITECTURE.md, "Drift -> retrain loop".

Both models are scored through ONNX as a node would run them, on the held-back part of the
capture and on the held-back part of the reference (neither was fitted on by the candidate).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from cloud_hub.models.captures import CaptureData
from cloud_hub.models.catalog import MAX_REFERENCE, Catalog, CatalogEntry, Reference
from cloud_hub.retraining.compare import Comparison, Limits, far, judge, recipe_of, split
from schemas.manifest import Manifest

log = logging.getLogger(__name__)


class CandidateError(ValueError):
    """No candidate can be made (no current model or reference, other channels, bad data)."""


@dataclass(frozen=True, slots=True)
class CandidateResult:
    """What training and comparing produced; ``version`` is set only when it was registered."""

    version: str
    registered: bool
    comparison: Comparison
    reasons: list[str]
    seconds: float
    figures: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CandidateJob:
    """What the worker needs: the capture, the model it replaces, and the limits."""

    work_id: str
    capture: CaptureData
    model: str
    current_version: str
    held_back: float
    limits: Limits


def build_candidate(models_dir: Path, job: CandidateJob, now: float) -> CandidateResult:
    """Train, compare and (if it passes) register a candidate; CandidateError says why not."""
    started = time.perf_counter()
    catalog = Catalog(models_dir)
    try:
        current, reference = _current(catalog, job)
        capture = _finite(job.capture.values, job.capture)
        train_new, held_new = split(capture, job.held_back)
        train_old, held_old = split(reference.values, job.held_back)
        old_bytes = catalog.artifact(current.name, current.version)
        current_held_back = _far(old_bytes, current.manifest, held_new)
        if current_held_back <= job.limits.max_far_held_back:
            # The drift did not hurt: the current model stays quiet on the new readings.
            return _nothing_to_gain(current_held_back, len(held_new), job, started)
        values = np.concatenate([train_old, train_new])
        version = catalog.next_version(job.model)
        onnx_bytes, manifest = _train(job, current.manifest, values, version, now)
        comparison = Comparison(
            current_held_back=current_held_back,
            candidate_held_back=_far(onnx_bytes, manifest, held_new),
            current_reference=_far(old_bytes, current.manifest, held_old),
            candidate_reference=_far(onnx_bytes, manifest, held_old),
            held_back_readings=len(held_new),
            reference_readings=len(held_old),
        )
        passed, reasons = judge(comparison, job.limits)
        if passed:
            catalog.add(onnx_bytes, manifest, now, source=f"retrain loop {job.work_id}")
            kept = np.concatenate([reference.values, train_new])[-MAX_REFERENCE:]
            catalog.keep_reference(
                job.model, version, Reference(reference.channels, job.capture.period, kept)
            )
    finally:
        catalog.close()
    seconds = time.perf_counter() - started
    figures = {**comparison.figures(), "train_readings": float(len(values)), "train_s": seconds}
    return CandidateResult(version, passed, comparison, reasons, seconds, figures)


def _nothing_to_gain(
    current_far: float, readings: int, job: CandidateJob, started: float
) -> CandidateResult:
    reason = (
        f"the current model flags only {current_far:.2%} of the held-back readings "
        f"(limit {job.limits.max_far_held_back:.2%}): nothing to gain, no candidate trained"
    )
    nan = float("nan")
    comparison = Comparison(current_far, nan, nan, nan, readings, 0)
    seconds = time.perf_counter() - started
    figures = {"far_current_held_back": current_far, "held_back_readings": float(readings)}
    return CandidateResult("", False, comparison, [reason], seconds, figures)


def _current(catalog: Catalog, job: CandidateJob) -> tuple[CatalogEntry, Reference]:
    ref = f"{job.model}@{job.current_version}"
    current = catalog.get(job.model, job.current_version)
    if current is None:
        raise CandidateError(f"the node's model {ref} is not in the catalog: register it")
    reference = catalog.reference(job.model, job.current_version)
    if reference is None:
        raise CandidateError(
            f"no healthy reference is kept for {ref}: "
            f"cloud-hub register DIR --reference CSV keeps one"
        )
    channels = job.capture.channels
    if not (current.channels == reference.channels == channels):
        raise CandidateError(
            f"capture channels {channels} differ from {ref}'s {current.channels} "
            f"or its reference's {reference.channels}"
        )
    return current, reference


def _finite(values: NDArray[np.float32], capture: CaptureData) -> NDArray[np.float32]:
    finite = values[np.isfinite(values).all(axis=1)]
    if len(finite) < len(values):
        log.warning(
            "capture %s: dropped %d readings with missing values",
            capture.command,
            len(values) - len(finite),
        )
    return finite


def _train(
    job: CandidateJob, current: Manifest, values: NDArray[np.float32], version: str, now: float
) -> tuple[bytes, Manifest]:
    # Imported here: onnx and onnxruntime are heavy and only training needs them.
    from cloud_hub.models.onnx_export import train_model

    return train_model(
        values,
        job.capture.channels,
        name=job.model,
        version=version,
        trained_by=f"retrain loop {job.work_id} on {job.capture.node}",
        config=recipe_of(current),
        now=now,
        sources=[
            f"reference of {job.model}@{job.current_version}",
            f"capture {job.capture.command} from {job.capture.node}",
        ],
        period_s=job.capture.period if job.capture.period > 0 else None,
    )


def _far(onnx_bytes: bytes, manifest: Manifest, values: NDArray[np.float32]) -> float:
    from cloud_hub.models.onnx_export import score_readings

    return far(score_readings(onnx_bytes, manifest, values), manifest.threshold, manifest.alarm)
