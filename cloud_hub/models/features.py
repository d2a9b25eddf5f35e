"""Window features that resist slow healthy drift, in numpy and as ONNX nodes.

A raw window ``[batch, W, C]`` becomes three per-channel statistics:

- ``level``: the window mean (for channels whose level is stable while healthy);
- ``slope``: least-squares slope over the window, per reading (for slowly drifting channels,
  whose level would count as many training SDs after an hour of healthy drift);
- ``spread``: the window standard deviation (vibration-like changes).

A :class:`FeatureSpec` says which statistic each channel contributes. Which channels "drift" is
decided from the training readings by :func:`drift_ratio`, not by channel name, so the same rule
applies to pumps with other sensors. The selected features are standardised with a robust centre
(median) and scale (``1.4826 * MAD`` floored by a fraction of the std).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from numpy.typing import NDArray
from onnx import NodeProto, TensorProto, helper, numpy_helper

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
Mode = Literal["level", "drift", "drift+spread"]
STATS = ("level", "slope", "spread")
_MAD_TO_SD = 1.4826
_SD_FLOOR = 0.25  # scale >= this fraction of the std: MAD of quantised channels can be ~0
_TINY = 1e-9
_AXES_AS_INPUT = 18


@dataclass(frozen=True)
class FeatureSpec:
    """Which statistic of which channel: ``columns`` index the ``[level C | slope C | spread C]``
    vector; ``owner[f]`` is the channel of feature ``f``; ``center``/``scale`` standardise."""

    window: int
    channels: int
    columns: tuple[int, ...]
    center: F32
    scale: F32

    @property
    def owner(self) -> NDArray[np.int64]:
        """Channel index of each selected feature."""
        return np.array([c % self.channels for c in self.columns], dtype=np.int64)

    def owner_matrix(self) -> F32:
        """``[F, C]`` 0/1 matrix summing per-feature terms into per-channel terms."""
        m = np.zeros((len(self.columns), self.channels), dtype=np.float32)
        m[np.arange(len(self.columns)), self.owner] = 1.0
        return m

    def names(self, channel_names: list[str]) -> list[str]:
        """Readable feature names, e.g. ``slope(Temperature)``."""
        return [
            f"{STATS[c // self.channels]}({channel_names[c % self.channels]})" for c in self.columns
        ]


def sliding_windows(values: NDArray[np.floating], window: int) -> F32:
    """Stride-1 windows ``[n - W + 1, W, C]`` float32; row ``i`` ends at reading ``i + W - 1``."""
    view = sliding_window_view(np.asarray(values, dtype=np.float32), window, axis=0)
    return np.ascontiguousarray(view.transpose(0, 2, 1))


def _slope_weights(window: int) -> F32:
    t = np.arange(window, dtype=np.float64) - (window - 1) / 2.0
    denom = float(np.sum(t * t)) if window > 1 else 1.0
    return (t / denom).astype(np.float32)


def all_stats(windows: NDArray[np.floating]) -> F32:
    """``[B, 3C]``: level, slope, spread of every channel (float32, as the ONNX graph does)."""
    x = np.asarray(windows, dtype=np.float32)
    mean = x.mean(axis=1, keepdims=True, dtype=np.float32)
    centred = x - mean
    slope = np.einsum("w,bwc->bc", _slope_weights(x.shape[1]), centred).astype(np.float32)
    spread = np.sqrt((centred * centred).mean(axis=1, dtype=np.float32))
    return np.concatenate([mean[:, 0, :], slope, spread], axis=1).astype(np.float32)


def drift_ratio(values: NDArray[np.floating], window: int) -> F64:
    """Per channel: spread of window means / spread expected from within-window noise.

    About 1 for a channel that is white noise around a fixed level; about ``sqrt(W)`` or more
    for a channel that wanders slowly (its window means move far more than noise explains).
    """
    stats = all_stats(sliding_windows(values, window)).astype(np.float64)
    c = stats.shape[1] // 3
    between = stats[:, :c].std(axis=0)
    within = np.median(stats[:, 2 * c :], axis=0) / np.sqrt(window)
    return np.asarray(between / np.maximum(within, _TINY), dtype=np.float64)


def choose_columns(
    values: NDArray[np.floating], window: int, mode: Mode, drift_limit: float
) -> tuple[int, ...]:
    """Feature columns for ``mode``: ``level`` = all levels; ``drift`` = levels of steady
    channels and slopes of drifting ones (drift ratio > ``drift_limit``); ``drift+spread``
    adds every channel's spread."""
    c = np.asarray(values).shape[1]
    if mode == "level":
        return tuple(range(c))
    ratio = drift_ratio(values, window)
    cols = [ch if ratio[ch] <= drift_limit else c + ch for ch in range(c)]
    if mode == "drift+spread":
        cols += [2 * c + ch for ch in range(c)]
    return tuple(cols)


def fit_spec(
    values: NDArray[np.floating], window: int, mode: Mode, drift_limit: float
) -> FeatureSpec:
    """Choose columns and robust standardisation from healthy training readings ``[n, C]``."""
    data = np.asarray(values, dtype=np.float64)
    columns = choose_columns(data, window, mode, drift_limit)
    f = all_stats(sliding_windows(data, window)).astype(np.float64)[:, list(columns)]
    center = np.median(f, axis=0)
    mad = _MAD_TO_SD * np.median(np.abs(f - center), axis=0)
    scale = np.maximum(np.maximum(mad, _SD_FLOOR * f.std(axis=0)), _TINY * (1.0 + np.abs(center)))
    return FeatureSpec(
        window, data.shape[1], columns, center.astype(np.float32), scale.astype(np.float32)
    )


def transform(spec: FeatureSpec, windows: NDArray[np.floating]) -> F32:
    """Standardised features ``[B, F]`` of raw windows ``[B, W, C]``."""
    f = all_stats(windows)[:, list(spec.columns)]
    return ((f - spec.center) / spec.scale).astype(np.float32)


def onnx_nodes(
    spec: FeatureSpec, source: str, target: str, opset: int
) -> tuple[list[NodeProto], list[TensorProto]]:
    """Nodes computing :func:`transform` from ``source`` [B, W, C] into ``target`` [B, F]."""
    p = "feat_"
    inits = [
        numpy_helper.from_array(_slope_weights(spec.window).reshape(1, -1), p + "slope_w"),
        numpy_helper.from_array(np.array(spec.columns, dtype=np.int64), p + "columns"),
        numpy_helper.from_array(spec.center, p + "center"),
        numpy_helper.from_array(spec.scale, p + "scale"),
        numpy_helper.from_array(np.array([1], dtype=np.int64), p + "axis1"),
    ]
    nodes = [
        _mean_over_window(source, p + "mean", p + "axis1", opset),
        helper.make_node("Sub", [source, p + "mean"], [p + "centred"]),
        helper.make_node("MatMul", [p + "slope_w", p + "centred"], [p + "slope"]),  # [B,1,C]
        helper.make_node("Mul", [p + "centred", p + "centred"], [p + "sq"]),
        _mean_over_window(p + "sq", p + "var", p + "axis1", opset),
        helper.make_node("Sqrt", [p + "var"], [p + "spread"]),
        helper.make_node("Concat", [p + "mean", p + "slope", p + "spread"], [p + "cat"], axis=2),
        helper.make_node("Squeeze", [p + "cat", p + "axis1"], [p + "all"]),
        helper.make_node("Gather", [p + "all", p + "columns"], [p + "sel"], axis=1),
        helper.make_node("Sub", [p + "sel", p + "center"], [p + "dev"]),
        helper.make_node("Div", [p + "dev", p + "scale"], [target]),
    ]
    return nodes, inits


def _mean_over_window(source: str, target: str, axes: str, opset: int) -> NodeProto:
    # ReduceMean takes its axes as an input from opset 18, as an attribute before.
    if opset >= _AXES_AS_INPUT:
        return helper.make_node("ReduceMean", [source, axes], [target], keepdims=1)
    return helper.make_node("ReduceMean", [source], [target], axes=[1], keepdims=1)
