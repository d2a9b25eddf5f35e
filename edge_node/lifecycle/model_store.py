"""The model store: the only code that writes model files on the node.

Layout: ``versions/<name>/<version>/{model.onnx,manifest.json}`` plus ``state.json`` naming the
active version and the history of those active before it (newest last, at most
``HISTORY_LIMIT``; ``previous`` is its last entry), so repeated rollbacks walk back through it.
A version folder appears only complete (written and fsync'd under a temporary name, then
renamed) and ``state.json`` is replaced atomically, so a crash at any point leaves a valid
active model: installing never touches ``state.json``, and activating never touches a version
folder. Leftovers of a crash are hidden names (``.incoming-*``,
``.state-*``) that nothing reads and :meth:`ModelStore.clean` removes.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from edge_node.lifecycle.sealing import ModelSeal
from schemas.files import atomic_write, fsync_dir
from schemas.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    Manifest,
    decode_manifest,
    encode_manifest,
)
from schemas.messages import ModelRef
from schemas.topics import check_id

log = logging.getLogger(__name__)

_TEMP_PREFIXES = (".incoming-", ".state-", ".state.json.", ".replaced-")
# Versions a node can walk back through; their folders are kept (pruning never takes them).
HISTORY_LIMIT = 5


class StoreError(Exception):
    """The store or a model folder is unusable; the message names the path."""


@dataclass(frozen=True, slots=True)
class StoreState:
    """The active version and the ones active before it (oldest first)."""

    active: ModelRef | None
    previous: ModelRef | None
    older: tuple[ModelRef, ...] = ()  # active before ``previous``, oldest first

    @property
    def history(self) -> tuple[ModelRef, ...]:
        """Every version a rollback can walk back to, oldest first (``previous`` last)."""
        return self.older + ((self.previous,) if self.previous is not None else ())


def with_history(active: ModelRef | None, history: Sequence[ModelRef]) -> StoreState:
    """A state with ``history`` (oldest first) bounded to ``HISTORY_LIMIT`` and without
    ``active`` or repeats (a version keeps its newest place)."""
    kept: list[ModelRef] = []
    for ref in reversed(history):
        if ref != active and ref not in kept:
            kept.append(ref)
    kept = kept[:HISTORY_LIMIT][::-1]
    return StoreState(active, kept[-1] if kept else None, tuple(kept[:-1]))


def rolled_back(state: StoreState, to: ModelRef | None = None) -> StoreState:
    """The state after a rollback (pure): one step back in the history, or to ``to``.

    A step back drops the version left from the history, so the next rollback goes further
    back rather than forth again. ``to`` in the history drops what came after it; ``to``
    elsewhere (a version rolled back from earlier, still installed) is switched to like a
    deploy, the version left joining the history.
    """
    history = list(state.history)
    target = to if to is not None else (history[-1] if history else None)
    if target is None:
        raise StoreError("no previous model to roll back to")
    if target == state.active:
        raise StoreError(f"{target.name}@{target.version} is already active")
    if target in history:
        return with_history(target, history[: history.index(target)])
    return with_history(target, [*history, *([state.active] if state.active else [])])


class ModelStore:
    """Model versions on disk with an atomically switched active/previous pointer."""

    def __init__(self, root: Path, seal: ModelSeal | None = None) -> None:
        self.root = root
        # With a seal, model files are written encrypted (edge_node/lifecycle/sealing.py).
        self.seal = seal
        (root / "versions").mkdir(parents=True, exist_ok=True)

    def path(self, ref: ModelRef) -> Path:
        """The folder of one installed version."""
        return (
            self.root
            / "versions"
            / check_id(ref.name, "model name")
            / check_id(ref.version, "model version")
        )

    def install(self, source: Path) -> ModelRef:
        """Copy a model folder (model.onnx + manifest.json) into the store; return its ref."""
        manifest_path = source / MANIFEST_FILE
        try:
            manifest = decode_manifest(manifest_path.read_bytes(), str(manifest_path))
        except OSError as exc:
            raise StoreError(f"{manifest_path}: cannot read: {exc.strerror}") from None
        except ValueError as exc:  # names the file and the field
            raise StoreError(str(exc)) from None
        ref = ModelRef(manifest.name, manifest.version)
        try:
            files = {name: (source / name).read_bytes() for name in (MODEL_FILE, MANIFEST_FILE)}
        except OSError as exc:
            raise StoreError(f"cannot install {source}: {exc}") from None
        target = self.path(ref)
        # The same version already installed is kept; a different copy (a corrupt one
        # installed before, now fixed at the source) replaces it.
        if all(_sha256(target / name) == _digest(data) for name, data in files.items()):
            return ref
        self._write_version(ref, files)
        return ref

    def install_bytes(self, manifest: Manifest, model: bytes) -> ModelRef:
        """Install a received artifact under its manifest; return its ref.

        A version already installed with the same sha256 is kept as it is; one whose model
        file differs (a corrupt earlier copy) is replaced.
        """
        ref = ModelRef(manifest.name, manifest.version)
        digest = hashlib.sha256(model).hexdigest()
        if digest != manifest.sha256:
            raise StoreError(
                f"{ref.name}@{ref.version}: model sha256 {digest} does not match "
                f"the manifest's {manifest.sha256}"
            )
        target = self.path(ref)
        if self.seal is None and _sha256(target / MODEL_FILE) == digest:
            return ref
        self._write_version(ref, {MODEL_FILE: model, MANIFEST_FILE: encode_manifest(manifest)})
        return ref

    def _write_version(self, ref: ModelRef, files: dict[str, bytes]) -> None:
        """Write a version folder under a temporary name, fsync it, then rename it in place."""
        target = self.path(ref)
        target.parent.mkdir(parents=True, exist_ok=True)
        if self.seal is not None and MODEL_FILE in files:
            files = {**files, MODEL_FILE: self.seal.seal(files[MODEL_FILE], target)}
        tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=target.parent))
        try:
            for name, data in files.items():
                with (tmp / name).open("wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
            if target.exists():  # a corrupt copy: move it aside first (rename is atomic)
                old = Path(tempfile.mkdtemp(prefix=".replaced-", dir=target.parent))
                os.replace(target, old / "version")
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, target)
            fsync_dir(target.parent)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StoreError(
                f"cannot install {ref.name}@{ref.version} into {target}: {exc}"
            ) from None

    def seal_plain(self) -> list[ModelRef]:
        """Encrypt the model files still in the clear (written before a key was set)."""
        if self.seal is None:
            return []
        sealed = []
        for ref in self.versions():
            path = self.path(ref) / MODEL_FILE
            try:
                data = path.read_bytes()
            except OSError as exc:
                log.warning("%s: cannot read to encrypt: %s", path, exc.strerror)
                continue
            if not self.seal.is_sealed(data):
                atomic_write(path, self.seal.seal(data, path.parent))
                sealed.append(ref)
        return sealed

    def state(self) -> StoreState:
        """The active and previous versions (None when the store is new)."""
        path = self.root / "state.json"
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return StoreState(None, None)
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path}: unreadable store state: {exc}") from None
        if not isinstance(raw, dict):
            raise StoreError(f"{path}: unreadable store state: not an object")
        history = raw.get("history")
        if isinstance(history, list):
            refs = [ref for ref in map(_ref, history) if ref is not None]
        else:  # written before there was a history: the previous version is all of it
            refs = [ref for ref in [_ref(raw.get("previous"))] if ref is not None]
        active = _ref(raw.get("active"))
        return StoreState(active, refs[-1] if refs else None, tuple(refs[:-1]))

    def activate(self, ref: ModelRef) -> StoreState:
        """Make ``ref`` active and push the current active one onto the history, atomically."""
        if not (self.path(ref) / MODEL_FILE).exists():
            raise StoreError(f"{ref.name}@{ref.version} is not installed in {self.root}")
        current = self.state()
        new = with_history(ref, [*current.history, *([current.active] if current.active else [])])
        self._write_state(new)
        return new

    def rollback(self, to: ModelRef | None = None) -> StoreState:
        """Go one step back in the history (or to ``to``), atomically; see :func:`rolled_back`."""
        try:
            new = rolled_back(self.state(), to)
        except StoreError as exc:
            raise StoreError(f"{self.root}: {exc}") from None
        return self.restore(new)

    def restore(self, state: StoreState) -> StoreState:
        """Write ``state`` as it is (to undo a switch exactly, or drop a broken version)."""
        for ref in (state.active, *state.history):
            if ref is not None and not (self.path(ref) / MODEL_FILE).exists():
                raise StoreError(f"{ref.name}@{ref.version} is not installed in {self.root}")
        self._write_state(state)
        return state

    def versions(self) -> list[ModelRef]:
        """Installed versions, oldest installed first."""
        found: list[tuple[float, ModelRef]] = []
        for name_dir in (self.root / "versions").iterdir():
            if not name_dir.is_dir() or name_dir.name.startswith("."):
                continue
            for version_dir in name_dir.iterdir():
                if version_dir.is_dir() and not version_dir.name.startswith("."):
                    ref = ModelRef(name_dir.name, version_dir.name)
                    found.append((version_dir.stat().st_mtime, ref))
        return [ref for _, ref in sorted(found, key=lambda item: item[0])]

    def prune(self, keep: int = 2) -> list[ModelRef]:
        """Delete all versions but the active, those in its history and the ``keep`` newest
        others (a version rolled back from stays a while, for ``rollback --to``)."""
        state = self.state()
        pinned = {state.active, *state.history}
        others = [ref for ref in self.versions() if ref not in pinned]
        doomed = others[: max(len(others) - keep, 0)]
        for ref in doomed:
            shutil.rmtree(self.path(ref), ignore_errors=True)
            log.info("pruned model %s@%s", ref.name, ref.version)
        return doomed

    def clean(self) -> int:
        """Remove what a crash left behind (temporary folders and state files)."""
        removed = 0
        candidates = [*self.root.iterdir(), *(self.root / "versions").glob("*/*")]
        for path in candidates:
            if path.name.startswith(_TEMP_PREFIXES):
                if path.is_dir():
                    shutil.rmtree(path, ignore_errors=True)
                else:
                    path.unlink(missing_ok=True)
                removed += 1
        return removed

    def _write_state(self, state: StoreState) -> None:
        # "previous" stays beside the history so that an older node software reads it.
        body = json.dumps(
            {
                "active": _raw(state.active),
                "previous": _raw(state.previous),
                "history": [_raw(ref) for ref in state.history],
            }
        )
        atomic_write(self.root / "state.json", body.encode())


def _ref(raw: object) -> ModelRef | None:
    if isinstance(raw, dict) and isinstance(raw.get("name"), str):
        return ModelRef(raw["name"], str(raw["version"]))
    return None


def _raw(ref: ModelRef | None) -> dict[str, str] | None:
    return None if ref is None else {"name": ref.name, "version": ref.version}


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _sha256(path: Path) -> str | None:
    """The file's sha256, or None when it cannot be read."""
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return None
