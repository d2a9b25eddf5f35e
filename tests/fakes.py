"""In-repo fakes for the node's ports, shared by unit tests."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor, Future
from typing import ParamSpec, TypeVar

import numpy as np
from numpy.typing import NDArray

from edge_node.scoring.runtime import ModelRuntime

P = ParamSpec("P")
T = TypeVar("T")
F32 = NDArray[np.float32]


class InlineExecutor(Executor):
    """Runs each job at once on the calling thread (the loop's polling still decides when)."""

    def submit(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> Future[T]:
        future: Future[T] = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except Exception as exc:
            future.set_exception(exc)
        return future


class NanScorer:
    """A real model that scores NaN: misbehaviour that only shows on real readings."""

    def __init__(self, inner: ModelRuntime) -> None:
        self.manifest, self.ref = inner.manifest, inner.ref

    def score(self, windows: F32) -> tuple[F32, F32 | None]:
        return np.full(len(windows), np.nan, np.float32), None
