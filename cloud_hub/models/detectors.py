"""Detector families on standardised features ``z [B, F]``: fit and score in numpy, ONNX nodes.

Every detector gives a score ``[B]`` and non-negative per-feature terms ``[B, F]`` that add up
to it, so per-channel contributions are the terms summed over each channel's features.

- :class:`PcaT2Q`: combined index T²/k + Q/θ (complete decomposition via the matrix root).
- :class:`Autoencoder`: dense F→H→F (tanh), numpy Adam; terms = squared residual / its
  training variance.
- :class:`KernelMset`: MSET-like similarity model: a memory of training vectors, Gaussian
  similarity weights, estimate = weighted memory, terms = squared residual / its leave-one-out
  training variance.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import numpy as np
from numpy.typing import NDArray
from onnx import NodeProto, TensorProto, helper, numpy_helper

F32 = NDArray[np.float32]
F64 = NDArray[np.float64]
_RESIDUAL_FLOOR = 1e-9
_VAR_FLOOR = 0.05  # residual variances (z units²) below this are not trusted: over-fit


class Detector(Protocol):
    """What the pipeline needs from a fitted detector."""

    def score(self, z: NDArray[np.floating]) -> tuple[F32, F32]:
        """Scores ``[B]`` and per-feature terms ``[B, F]``."""
        ...

    def onnx_nodes(
        self, source: str, score: str, terms: str
    ) -> tuple[list[NodeProto], list[TensorProto]]:
        """Nodes computing :meth:`score` from ``source`` [B, F]."""
        ...

    def facts(self) -> dict[str, float | int | str]:
        """What the fit found, for the manifest's training facts."""
        ...


def _sum_node(source: str, target: str, axes_name: str) -> NodeProto:
    return helper.make_node("ReduceSum", [source, axes_name], [target], keepdims=0)


# --------------------------------------------------------------------------------------- PCA
@dataclass(frozen=True, eq=False)
class PcaT2Q:
    """``terms = (z @ root)²``; ``root`` = sqrt of P diag(1/λk) Pᵀ + (I − P Pᵀ)/θ."""

    root: F32
    components: int

    @staticmethod
    def fit(z: NDArray[np.floating], components: float) -> PcaT2Q:
        """Fit on training features; ``components`` = fraction of variance kept (0, 1)."""
        x = np.asarray(z, dtype=np.float64)
        x = x - x.mean(axis=0)
        _, s, vt = np.linalg.svd(x, full_matrices=False)
        var = s**2 / max(len(x) - 1, 1)
        rank = int(np.sum(var > _RESIDUAL_FLOOR * var[0]))
        k = min(int(np.searchsorted(np.cumsum(var) / var.sum(), components) + 1), rank)
        axes = vt.T
        kept = axes[:, :k]
        root = kept @ np.diag(1.0 / np.sqrt(var[:k] * k)) @ kept.T
        theta = float(var[k:].sum())
        if theta > _RESIDUAL_FLOOR * var.sum():
            root = root + (np.eye(len(axes)) - kept @ kept.T) / np.sqrt(theta)
        return PcaT2Q(root.astype(np.float32), k)

    def facts(self) -> dict[str, float | int | str]:
        return {"components": self.components}

    def score(self, z: NDArray[np.floating]) -> tuple[F32, F32]:
        y = np.asarray(z, dtype=np.float32) @ self.root
        terms = (y * y).astype(np.float32)
        return terms.sum(axis=1, dtype=np.float32), terms

    def onnx_nodes(
        self, source: str, score: str, terms: str
    ) -> tuple[list[NodeProto], list[TensorProto]]:
        inits = [
            numpy_helper.from_array(self.root, "pca_root"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "pca_axis1"),
        ]
        nodes = [
            helper.make_node("MatMul", [source, "pca_root"], ["pca_y"]),
            helper.make_node("Mul", ["pca_y", "pca_y"], [terms]),
            _sum_node(terms, score, "pca_axis1"),
        ]
        return nodes, inits


# ------------------------------------------------------------------------------- autoencoder
@dataclass(frozen=True, eq=False)
class Autoencoder:
    """``ẑ = tanh(z W1 + b1) W2 + b2``; ``terms = (z − ẑ)² / v``."""

    w1: F32
    b1: F32
    w2: F32
    b2: F32
    inv_var: F32

    @staticmethod
    def fit(
        z: NDArray[np.floating],
        hidden: int,
        *,
        epochs: int = 300,
        lr: float = 0.01,
        batch: int = 64,
        weight_decay: float = 1e-4,
        seed: int = 0,
    ) -> Autoencoder:
        """Train with mini-batch Adam on mean squared reconstruction error (deterministic)."""
        x = np.asarray(z, dtype=np.float64)
        n, f = x.shape
        rng = np.random.default_rng(seed)
        params = [
            rng.normal(0.0, 1.0 / np.sqrt(f), (f, hidden)),
            np.zeros(hidden),
            rng.normal(0.0, 1.0 / np.sqrt(hidden), (hidden, f)),
            np.zeros(f),
        ]
        m = [np.zeros_like(p) for p in params]
        v = [np.zeros_like(p) for p in params]
        step = 0
        for _ in range(epochs):
            order = rng.permutation(n)
            for start in range(0, n, batch):
                xb = x[order[start : start + batch]]
                grads = _ae_grads(params, xb, weight_decay)
                step += 1
                for i, g in enumerate(grads):
                    m[i] = 0.9 * m[i] + 0.1 * g
                    v[i] = 0.999 * v[i] + 0.001 * g * g
                    mh = m[i] / (1 - 0.9**step)
                    vh = v[i] / (1 - 0.999**step)
                    params[i] = params[i] - lr * mh / (np.sqrt(vh) + 1e-8)
        w1, b1, w2, b2 = params
        resid = x - (np.tanh(x @ w1 + b1) @ w2 + b2)
        var = np.maximum((resid**2).mean(axis=0), _VAR_FLOOR)
        f32 = [p.astype(np.float32) for p in (w1, b1, w2, b2)]
        return Autoencoder(f32[0], f32[1], f32[2], f32[3], (1.0 / var).astype(np.float32))

    def facts(self) -> dict[str, float | int | str]:
        return {"hidden": int(self.w1.shape[1])}

    def score(self, z: NDArray[np.floating]) -> tuple[F32, F32]:
        x = np.asarray(z, dtype=np.float32)
        r = x - (np.tanh(x @ self.w1 + self.b1) @ self.w2 + self.b2)
        terms = (r * r * self.inv_var).astype(np.float32)
        return terms.sum(axis=1, dtype=np.float32), terms

    def onnx_nodes(
        self, source: str, score: str, terms: str
    ) -> tuple[list[NodeProto], list[TensorProto]]:
        names = ("ae_w1", "ae_b1", "ae_w2", "ae_b2", "ae_inv_var")
        arrays = (self.w1, self.b1, self.w2, self.b2, self.inv_var)
        inits = [numpy_helper.from_array(a, n) for a, n in zip(arrays, names, strict=True)]
        inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), "ae_axis1"))
        nodes = [
            helper.make_node("MatMul", [source, "ae_w1"], ["ae_h0"]),
            helper.make_node("Add", ["ae_h0", "ae_b1"], ["ae_h1"]),
            helper.make_node("Tanh", ["ae_h1"], ["ae_h"]),
            helper.make_node("MatMul", ["ae_h", "ae_w2"], ["ae_o0"]),
            helper.make_node("Add", ["ae_o0", "ae_b2"], ["ae_out"]),
            helper.make_node("Sub", [source, "ae_out"], ["ae_r"]),
            helper.make_node("Mul", ["ae_r", "ae_r"], ["ae_r2"]),
            helper.make_node("Mul", ["ae_r2", "ae_inv_var"], [terms]),
            _sum_node(terms, score, "ae_axis1"),
        ]
        return nodes, inits


def _ae_grads(params: list[F64], x: F64, weight_decay: float) -> list[F64]:
    w1, b1, w2, b2 = params
    h = np.tanh(x @ w1 + b1)
    out = h @ w2 + b2
    d_out = 2.0 * (out - x) / x.size
    d_h = (d_out @ w2.T) * (1.0 - h * h)
    return [
        x.T @ d_h + weight_decay * w1,
        d_h.sum(axis=0),
        h.T @ d_out + weight_decay * w2,
        d_out.sum(axis=0),
    ]


# ------------------------------------------------------------------------- MSET-like kernel
@dataclass(frozen=True, eq=False)
class KernelMset:
    """Estimate ``ẑ = softmax(−‖z − d_i‖² / 2h²) @ D`` from memory ``D``; terms = r² / v."""

    memory: F32  # [M, F]
    gamma: float  # 1 / (2 h²)
    inv_var: F32

    @staticmethod
    def fit(z: NDArray[np.floating], memory_size: int, bandwidth: float) -> KernelMset:
        """Memory = ``memory_size`` training vectors evenly spaced in time; ``h`` =
        ``bandwidth`` × median distance between memory vectors. Residual variance is
        leave-one-out over the memory (a vector cannot explain itself)."""
        x = np.asarray(z, dtype=np.float64)
        idx = np.unique(np.linspace(0, len(x) - 1, min(memory_size, len(x))).round().astype(int))
        mem = x[idx]
        d2 = _sq_dist(mem, mem)
        med = float(np.median(d2[np.triu_indices(len(mem), 1)]))
        gamma = 1.0 / (2.0 * bandwidth**2 * max(med, _RESIDUAL_FLOOR))
        logits = -gamma * d2
        np.fill_diagonal(logits, -np.inf)
        w = _softmax(logits)
        resid = mem - w @ mem
        var = np.maximum((resid**2).mean(axis=0), _VAR_FLOOR)
        return KernelMset(mem.astype(np.float32), gamma, (1.0 / var).astype(np.float32))

    def facts(self) -> dict[str, float | int | str]:
        return {"memory": int(self.memory.shape[0]), "gamma": round(self.gamma, 6)}

    def score(self, z: NDArray[np.floating]) -> tuple[F32, F32]:
        x = np.asarray(z, dtype=np.float32)
        g = np.float32(self.gamma)
        logits = 2.0 * g * (x @ self.memory.T) - g * (self.memory**2).sum(1)
        w = _softmax(logits.astype(np.float64)).astype(np.float32)
        r = x - w @ self.memory
        terms = (r * r * self.inv_var).astype(np.float32)
        return terms.sum(axis=1, dtype=np.float32), terms

    def onnx_nodes(
        self, source: str, score: str, terms: str
    ) -> tuple[list[NodeProto], list[TensorProto]]:
        mem_t = np.ascontiguousarray(self.memory.T * np.float32(2.0 * self.gamma))
        inits = [
            numpy_helper.from_array(mem_t, "ms_mem2g_t"),
            numpy_helper.from_array(self.memory, "ms_mem"),
            numpy_helper.from_array(
                (-np.float32(self.gamma) * (self.memory**2).sum(1)).astype(np.float32),
                "ms_mem_bias",
            ),
            numpy_helper.from_array(self.inv_var, "ms_inv_var"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "ms_axis1"),
        ]
        # logits = 2γ z·d − γ‖d‖² (the −γ‖z‖² term is constant per row: softmax ignores it)
        nodes = [
            helper.make_node("MatMul", [source, "ms_mem2g_t"], ["ms_cross"]),
            helper.make_node("Add", ["ms_cross", "ms_mem_bias"], ["ms_logits"]),
            helper.make_node("Softmax", ["ms_logits"], ["ms_w"], axis=1),
            helper.make_node("MatMul", ["ms_w", "ms_mem"], ["ms_est"]),
            helper.make_node("Sub", [source, "ms_est"], ["ms_r"]),
            helper.make_node("Mul", ["ms_r", "ms_r"], ["ms_r2"]),
            helper.make_node("Mul", ["ms_r2", "ms_inv_var"], [terms]),
            _sum_node(terms, score, "ms_axis1"),
        ]
        return nodes, inits


def _sq_dist(a: F64, b: F64) -> F64:
    d: F64 = np.maximum((a * a).sum(1)[:, None] - 2.0 * a @ b.T + (b * b).sum(1)[None, :], 0.0)
    return d


def _softmax(logits: F64) -> F64:
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    out: F64 = e / e.sum(axis=1, keepdims=True)
    return out
