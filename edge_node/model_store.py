"""The model store: the only code that writes model files on the node.

Layout: ``versions/<name>/<version>/{model.onnx,manifest.json}`` plus ``state.json`` naming the
active and the previous version. A version folder appears only complete (written under a
temporary name, then renamed) and ``state.json`` is replaced atomically, so a crash at any
point leaves a valid active model.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from schemas.manifest import decode_manifest
from schemas.messages import ModelRef
from schemas.topics import check_id

MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"


class StoreError(Exception):
    """The store or a model folder is unusable; the message names the path."""


@dataclass(frozen=True, slots=True)
class StoreState:
    active: ModelRef | None
    previous: ModelRef | None


class ModelStore:
    """Model versions on disk with an atomically switched active/previous pointer."""

    def __init__(self, root: Path) -> None:
        self.root = root
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
        ref = ModelRef(manifest.name, manifest.version)
        target = self.path(ref)
        if target.exists():
            return ref
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".incoming-", dir=target.parent))
        try:
            for name in (MODEL_FILE, MANIFEST_FILE):
                shutil.copyfile(source / name, tmp / name)
                _fsync(tmp / name)
            os.replace(tmp, target)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StoreError(f"cannot install {source} into {target}: {exc}") from None
        return ref

    def state(self) -> StoreState:
        """The active and previous versions (None when the store is new)."""
        path = self.root / "state.json"
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return StoreState(None, None)
        except (OSError, ValueError) as exc:
            raise StoreError(f"{path}: unreadable store state: {exc}") from None
        return StoreState(_ref(raw.get("active")), _ref(raw.get("previous")))

    def activate(self, ref: ModelRef) -> StoreState:
        """Make ``ref`` active and the current active one previous, atomically."""
        if not (self.path(ref) / MODEL_FILE).exists():
            raise StoreError(f"{ref.name}@{ref.version} is not installed in {self.root}")
        current = self.state()
        previous = current.active if current.active != ref else current.previous
        new = StoreState(ref, previous)
        self._write_state(new)
        return new

    def _write_state(self, state: StoreState) -> None:
        body = json.dumps({"active": _raw(state.active), "previous": _raw(state.previous)})
        fd, tmp = tempfile.mkstemp(prefix=".state-", dir=self.root)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.root / "state.json")


def _ref(raw: object) -> ModelRef | None:
    if isinstance(raw, dict) and isinstance(raw.get("name"), str):
        return ModelRef(raw["name"], str(raw["version"]))
    return None


def _raw(ref: ModelRef | None) -> dict[str, str] | None:
    return None if ref is None else {"name": ref.name, "version": ref.version}


def _fsync(path: Path) -> None:
    with path.open("rb") as handle:
        os.fsync(handle.fileno())
