"""Model switches: install and load in a worker thread, switch on the main thread.

Loading a model (reading it, building an onnxruntime session, warming it up) takes from
milliseconds to seconds; the main loop must go on scoring with the old model meanwhile. So the
slow part runs on a single worker thread (``concurrent.futures``) and the main loop polls the
future; the switch itself (pipeline and store pointers) happens on the main thread, between two
blocks. Like MLServer's registry, the new model is loaded before the old one is let go.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from edge_node.lifecycle.model_store import StoreError, StoreState, rolled_back
from edge_node.lifecycle.probation import ProbationPolicy
from edge_node.scoring.pipeline import ChannelMismatch, Pipeline, RolledBack, Scored, Scorer
from schemas.manifest import MANIFEST_FILE, MODEL_FILE, Manifest, decode_manifest
from schemas.messages import ModelRef

log = logging.getLogger(__name__)

Loader = Callable[[Path], Scorer]


class Store(Protocol):
    """The model store port (edge_node.lifecycle.model_store.ModelStore)."""

    def path(self, ref: ModelRef) -> Path: ...

    def state(self) -> StoreState: ...

    def install_bytes(self, manifest: Manifest, model: bytes) -> ModelRef: ...

    def activate(self, ref: ModelRef) -> StoreState: ...

    def rollback(self, to: ModelRef | None = None) -> StoreState: ...

    def restore(self, state: StoreState) -> StoreState: ...

    def prune(self, keep: int = 2) -> list[ModelRef]: ...


@dataclass(frozen=True)
class Switched:
    """The end of a model operation on ``model``: active now, or ``error`` saying why not."""

    command: str
    command_type: str
    model: ModelRef
    error: str = ""
    scored: Scored = field(default_factory=Scored)
    loaded: Scorer | None = None  # a staged model (shadow candidate), loaded but not active


@dataclass
class _Job:
    command: str
    command_type: str
    model: ModelRef
    future: Future[Scorer]


class Switcher:
    """Runs one deploy or rollback at a time and keeps the store in step with the pipeline."""

    def __init__(
        self,
        *,
        store: Store,
        pipeline: Pipeline,
        load: Loader,
        executor: Executor,
        probation: ProbationPolicy,
        keep: int = 2,
    ) -> None:
        self.store = store
        self.pipeline = pipeline
        self._load = load
        self._executor = executor
        self._probation = probation
        self._keep = keep
        self._job: _Job | None = None
        self._before: tuple[str, StoreState] | None = None  # store state before the last switch

    @property
    def busy(self) -> str:
        """``"<type> <id>"`` of the operation under way, or ""."""
        return "" if self._job is None else f"{self._job.command_type} {self._job.command}"

    def previous(self) -> ModelRef | None:
        """The store's previous model (None, logged, if the store state cannot be read)."""
        try:
            return self.store.state().previous
        except StoreError as exc:
            log.error("%s", exc)
            return None

    def deploy(self, command: str, manifest: Manifest, artifact: bytes) -> None:
        """Install and load a received artifact in the worker; :meth:`poll` finishes it."""
        self._check_idle()
        ref = ModelRef(manifest.name, manifest.version)
        future = self._executor.submit(self._install, manifest, artifact)
        self._start(_Job(command, "deploy", ref, future))

    def installed(self, manifest: Manifest) -> bool:
        """Whether the store holds ``manifest``'s version under this very manifest (a shadow
        run's candidate, say), so that a deploy of it can load it without fetching it."""
        try:
            folder = self.store.path(ModelRef(manifest.name, manifest.version))
            stored = decode_manifest((folder / MANIFEST_FILE).read_bytes(), str(folder))
        except (OSError, ValueError):  # not installed, or not readable: fetch it
            return False
        return stored == manifest and (folder / MODEL_FILE).exists()

    def deploy_installed(self, command: str, manifest: Manifest) -> None:
        """Load an installed version (see :meth:`installed`) in the worker; :meth:`poll`
        switches to it as after a deploy."""
        self._check_idle()
        ref = ModelRef(manifest.name, manifest.version)
        future = self._executor.submit(self._load, self.store.path(ref))
        self._start(_Job(command, "deploy", ref, future))

    def stage(self, command: str, manifest: Manifest, artifact: bytes) -> None:
        """Install a received artifact without making it active and load it in the worker;
        :meth:`poll` hands the loaded model back (a shadow run's candidate). Installed, it
        stays in the store like any inactive version."""
        self._check_idle()
        ref = ModelRef(manifest.name, manifest.version)
        future = self._executor.submit(self._install, manifest, artifact)
        self._start(_Job(command, "shadow", ref, future))

    def rollback(self, command: str, to: str | None = None) -> ModelRef:
        """Load the model a rollback goes to in the worker: the last one in the store's history,
        or version ``to`` of the active model's name; return which one it is."""
        self._check_idle()
        state = self.store.state()
        target = self._target(state, to)
        future = self._executor.submit(self._load, self.store.path(target))
        self._start(_Job(command, "rollback", target, future))
        return target

    def _target(self, state: StoreState, to: str | None) -> ModelRef:
        if to is None:
            if state.previous is None:
                raise StoreError("no previous model")
            return state.previous
        name = state.active.name if state.active else self.pipeline.scorer.ref.name
        target = ModelRef(name, to)
        if target == state.active:
            raise StoreError(f"{name}@{to} is already active")
        try:
            installed = (self.store.path(target) / MODEL_FILE).exists()
        except ValueError as exc:  # a version that cannot be a folder name
            raise StoreError(str(exc)) from None
        if not installed:
            kept = ", ".join(f"{r.version}" for r in state.history if r.name == name) or "none"
            raise StoreError(f"{name}@{to} is not installed here (history: {kept})")
        return target

    def poll(self, now: float) -> Switched | None:
        """Finish the operation if the worker is done: switch, or say what went wrong."""
        job = self._job
        if job is None or not job.future.done():
            return None
        self._job = None
        try:
            scorer = job.future.result()
        # Whatever the worker raised fails this command; a bad model must not stop the node.
        except Exception as exc:
            log.warning("%s %s failed: %s", job.command_type, job.command, exc)
            return Switched(job.command, job.command_type, job.model, str(exc) or repr(exc))
        if job.command_type == "shadow":
            return Switched(job.command, job.command_type, scorer.ref, loaded=scorer)
        try:
            scored = self._switch(job, scorer, now)
        except (StoreError, ChannelMismatch) as exc:
            log.warning("%s %s failed: %s", job.command_type, job.command, exc)
            return Switched(job.command, job.command_type, job.model, str(exc))
        log.info("%s %s: now scoring with %s", job.command_type, job.command, scorer.ref)
        return Switched(job.command, job.command_type, scorer.ref, "", scored)

    def undo(self, rolled: RolledBack) -> None:
        """Put the store back as it was before the switch whose model failed probation.

        Restoring the exact earlier state (rather than activating the old model) keeps the
        failed version from becoming "previous", where a later rollback would find it.
        """
        before = self._before[1] if self._before and self._before[0] == rolled.tag else None
        self._before = None
        try:
            if before is not None and before.active == rolled.restored:
                self.store.restore(before)
            else:
                self.store.activate(rolled.restored)
        except StoreError as exc:
            log.error("after rolling back to %s: %s", rolled.restored, exc)
        self._prune()

    def passed(self, tag: str) -> None:
        """The model of switch ``tag`` passed probation: old versions may go now."""
        if self._before and self._before[0] == tag:
            self._before = None
        self._prune()

    def _prune(self) -> None:
        # Not while the worker installs or loads: it may be about to read an old version.
        if self._job is not None:
            return
        try:
            pruned = self.store.prune(self._keep)
        except (StoreError, OSError) as exc:
            log.warning("pruning the model store: %s", exc)
            return
        if pruned:
            log.info("pruned %d old model versions", len(pruned))

    def close(self) -> None:
        """Stop the worker without waiting for a load in progress."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _check_idle(self) -> None:
        if self._job is not None:
            raise RuntimeError(f"{self.busy} in progress")  # callers check busy first

    def _start(self, job: _Job) -> None:
        self._job = job

    def _install(self, manifest: Manifest, artifact: bytes) -> Scorer:
        """Worker thread: write the version folder, then load it from there."""
        ref = self.store.install_bytes(manifest, artifact)
        return self._load(self.store.path(ref))

    def _switch(self, job: _Job, scorer: Scorer, now: float) -> Scored:
        before = self.store.state()
        if job.command_type == "rollback":
            self.store.rollback(scorer.ref)
        else:
            self.store.activate(scorer.ref)
        try:
            scored = self.pipeline.switch(scorer, now, probation=self._probation, tag=job.command)
        except ChannelMismatch:
            self.store.restore(before)
            raise
        self._before = (job.command, before)
        return scored


def open_active(store: Store, load: Loader) -> tuple[Scorer, str]:
    """Load the store's active model, or its previous one if the active one fails to load.

    Returns the model and, after a fallback, what went wrong (for the log and telemetry). The
    failed version is dropped from the store's pointers so nothing loads it by accident.
    """
    state = store.state()
    if state.active is None:
        raise StoreError("the model store has no active model")
    try:
        return load(store.path(state.active)), ""
    except Exception as exc:  # any load failure of the active model triggers the fallback
        if state.previous is None:
            raise
        problem = f"active model {state.active.name}@{state.active.version} failed to load: {exc}"
    scorer = load(store.path(state.previous))
    store.restore(rolled_back(state))
    return scorer, f"{problem}; fell back to {state.previous.name}@{state.previous.version}"
