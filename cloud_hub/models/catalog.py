"""The model catalog: registered model versions and their artifacts; the only owner of its files.

Layout under ``models_dir``: ``catalog.db`` (SQLite, WAL) and ``<name>/<version>/`` holding
``model.onnx`` and ``manifest.json``. A version is immutable once registered: registering the
identical artifact again is a no-op, a different one under the same name and version is refused.
``serve`` reads artifacts to publish chunks while the CLI registers new versions, so the file
is opened by several processes; a registration holds the write lock from its check to its
insert, so two registrations of one version cannot both win.
"""

from __future__ import annotations

import builtins
import hashlib
import io
import os
import shutil
import sqlite3
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec
import numpy as np
from numpy.typing import NDArray

from cloud_hub.store.sqlite_file import open_wal
from schemas.files import atomic_write
from schemas.manifest import (
    MANIFEST_FILE,
    MODEL_FILE,
    Manifest,
    decode_manifest,
    encode_manifest,
)
from schemas.topics import TopicError, check_id

DB_FILE: Final = "catalog.db"
# Healthy readings a version stands for, kept beside it for the retrain loop's comparison.
REFERENCE_FILE: Final = "reference.npz"
# The newest readings a version keeps as its reference (8 channels: ~640 KB).
MAX_REFERENCE: Final = 20_000
SCHEMA_VERSION: Final = 1

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS models (
    name           TEXT NOT NULL,
    version        TEXT NOT NULL,
    sha256         TEXT NOT NULL,
    size           INTEGER NOT NULL,
    algorithm      TEXT NOT NULL,
    trained_by     TEXT NOT NULL,
    created_at     REAL NOT NULL,
    registered_at  REAL NOT NULL,
    threshold      REAL NOT NULL,
    channels       TEXT NOT NULL,
    manifest       TEXT NOT NULL,
    PRIMARY KEY (name, version)
)
"""
_COLUMNS: Final = (
    "name, version, sha256, size, algorithm, trained_by, created_at, registered_at, "
    "threshold, channels, manifest"
)


class CatalogError(RuntimeError):
    """A model that cannot be registered or read; the message names the model or the file."""


class UnknownModel(CatalogError):
    """No such name and version in the catalog."""


@dataclass(frozen=True, slots=True)
class CatalogEntry:
    """One registered model version."""

    name: str
    version: str
    sha256: str
    size: int
    algorithm: str
    trained_by: str
    created_at: float
    registered_at: float
    threshold: float
    channels: list[str]
    manifest: Manifest

    @property
    def ref(self) -> str:
        """``name@version``."""
        return f"{self.name}@{self.version}"


@dataclass(frozen=True, eq=False)  # arrays have no single truth value to compare by
class Reference:
    """Healthy readings ``[n, C]`` a model version stands for (``period`` 0: unknown)."""

    channels: builtins.list[str]
    period: float
    values: NDArray[np.float32]


class Catalog:
    """Registered models in ``models_dir``."""

    def __init__(self, models_dir: Path | str) -> None:
        self.root = Path(models_dir)
        self.path = self.root / DB_FILE
        try:
            self._db = open_wal(self.path, autocommit=True)
            self._db.execute(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except (OSError, sqlite3.Error) as exc:
            raise CatalogError(f"{self.path}: cannot open the model catalog: {exc}") from None

    def register(self, folder: Path | str, now: float) -> CatalogEntry:
        """Register the model in ``folder`` (``model.onnx`` + ``manifest.json``); idempotent."""
        folder = Path(folder)
        try:
            manifest_bytes = (folder / MANIFEST_FILE).read_bytes()
            onnx_bytes = (folder / MODEL_FILE).read_bytes()
        except OSError as exc:
            raise CatalogError(f"{exc.filename}: cannot read the model: {exc.strerror}") from None
        try:
            manifest = decode_manifest(manifest_bytes, str(folder / MANIFEST_FILE))
        except ValueError as exc:
            raise CatalogError(str(exc)) from None
        return self.add(onnx_bytes, manifest, now, source=str(folder))

    def add(self, onnx_bytes: bytes, manifest: Manifest, now: float, source: str) -> CatalogEntry:
        """Register an artifact and its manifest (``source`` names them in errors)."""
        _check_names(manifest, source)
        digest = hashlib.sha256(onnx_bytes).hexdigest()
        if digest != manifest.sha256:
            raise CatalogError(
                f"{source}: sha256 of {MODEL_FILE} is {digest}, the manifest says {manifest.sha256}"
            )
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                entry = self._add_locked(onnx_bytes, manifest, now)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise CatalogError(f"{self.path}: cannot register {source}: {exc}") from None
        return entry

    def _add_locked(self, onnx_bytes: bytes, manifest: Manifest, now: float) -> CatalogEntry:
        existing = self.get(manifest.name, manifest.version)
        if existing is not None:
            if existing.sha256 != manifest.sha256:
                raise CatalogError(
                    f"{existing.ref} is already registered with sha256 {existing.sha256}, "
                    f"not {manifest.sha256}: register the new model under a new version"
                )
            return existing
        self._install(onnx_bytes, manifest)
        entry = _entry_of(manifest, len(onnx_bytes), now)
        self._db.execute(
            f"INSERT INTO models ({_COLUMNS}) VALUES ({', '.join('?' * 11)})", _params(entry)
        )
        return entry

    def _install(self, onnx_bytes: bytes, manifest: Manifest) -> None:
        """Write both files into a fresh folder, then move it into place in one rename."""
        target = self.root / manifest.name / manifest.version
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=".incoming-"))
        try:
            _write_synced(staging / MODEL_FILE, onnx_bytes)
            _write_synced(staging / MANIFEST_FILE, encode_manifest(manifest))
            if target.exists():
                # Left by a registration that died before its insert: the row is the truth.
                shutil.rmtree(target)
            os.rename(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def get(self, name: str, version: str) -> CatalogEntry | None:
        """The entry of ``name@version``, or None."""
        rows = self._select("WHERE name = ? AND version = ?", (name, version))
        return rows[0] if rows else None

    def list(self) -> builtins.list[CatalogEntry]:
        """Every entry, by name then version (integer versions in numeric order)."""
        return sorted(self._select("", ()), key=lambda e: (e.name, *_version_key(e)))

    def latest(self, name: str) -> CatalogEntry | None:
        """The highest version of ``name`` (integers by value, above any other version)."""
        entries = self._select("WHERE name = ?", (name,))
        return max(entries, key=_version_key) if entries else None

    def next_version(self, name: str) -> str:
        """One above the highest integer version of ``name``; ``"1"`` when there is none."""
        numbers = [int(e.version) for e in self._select("WHERE name = ?", (name,)) if _is_int(e)]
        return str(max(numbers, default=0) + 1)

    def artifact(self, name: str, version: str) -> bytes:
        """The ONNX bytes of ``name@version``, checked against the registered sha256."""
        entry = self.get(name, version)
        if entry is None:
            raise UnknownModel(f"{name}@{version} is not in the catalog at {self.root}")
        path = self.root / name / version / MODEL_FILE
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CatalogError(f"{path}: cannot read {entry.ref}: {exc.strerror}") from None
        if hashlib.sha256(data).hexdigest() != entry.sha256:
            raise CatalogError(f"{path}: the file no longer matches the sha256 of {entry.ref}")
        return data

    def keep_reference(self, name: str, version: str, reference: Reference) -> None:
        """Keep healthy readings of ``name@version`` beside it (replacing earlier ones)."""
        if self.get(name, version) is None:
            raise UnknownModel(f"{name}@{version} is not in the catalog at {self.root}")
        buffer = io.BytesIO()
        np.savez(
            buffer,
            values=np.asarray(reference.values, dtype=np.float32),
            channels=np.array(reference.channels),
            period=np.float64(reference.period),
        )
        path = self.root / name / version / REFERENCE_FILE
        try:
            atomic_write(path, buffer.getvalue())
        except OSError as exc:
            raise CatalogError(f"{path}: cannot keep the reference: {exc.strerror}") from None

    def reference(self, name: str, version: str) -> Reference | None:
        """The healthy readings kept for ``name@version``, or None."""
        path = self.root / name / version / REFERENCE_FILE
        if not path.exists():
            return None
        try:
            with np.load(path, allow_pickle=False) as npz:
                return Reference(
                    [str(c) for c in npz["channels"]],
                    float(npz["period"]),
                    np.asarray(npz["values"], dtype=np.float32),
                )
        except (OSError, ValueError, KeyError) as exc:
            raise CatalogError(f"{path}: unreadable reference: {exc}") from None

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def _select(self, where: str, params: tuple[str, ...]) -> builtins.list[CatalogEntry]:
        try:
            rows = self._db.execute(f"SELECT {_COLUMNS} FROM models {where}", params).fetchall()
        except sqlite3.Error as exc:
            raise CatalogError(f"{self.path}: cannot read the catalog: {exc}") from None
        return [_row(r) for r in rows]


def _check_names(manifest: Manifest, source: str) -> None:
    """Name and version become folder names and topic levels: only safe characters."""
    try:
        check_id(manifest.name, "model name")
        check_id(manifest.version, "model version")
    except TopicError as exc:
        raise CatalogError(f"{source}: {exc}") from None


def _entry_of(manifest: Manifest, size: int, now: float) -> CatalogEntry:
    return CatalogEntry(
        name=manifest.name,
        version=manifest.version,
        sha256=manifest.sha256,
        size=size,
        algorithm=manifest.algorithm,
        trained_by=manifest.trained_by,
        created_at=manifest.created_at,
        registered_at=now,
        threshold=manifest.threshold,
        channels=list(manifest.input.channels),
        manifest=manifest,
    )


def _params(e: CatalogEntry) -> tuple[object, ...]:
    return (
        e.name,
        e.version,
        e.sha256,
        e.size,
        e.algorithm,
        e.trained_by,
        e.created_at,
        e.registered_at,
        e.threshold,
        msgspec.json.encode(e.channels).decode(),
        encode_manifest(e.manifest).decode(),
    )


def _row(values: tuple[Any, ...]) -> CatalogEntry:
    name, version, sha, size, algorithm, trained_by, created, registered, threshold, *rest = values
    channels, manifest = rest
    return CatalogEntry(
        name=name,
        version=version,
        sha256=sha,
        size=size,
        algorithm=algorithm,
        trained_by=trained_by,
        created_at=created,
        registered_at=registered,
        threshold=threshold,
        channels=msgspec.json.decode(channels, type=builtins.list[str]),
        manifest=decode_manifest(manifest.encode(), f"catalog entry {name}@{version}"),
    )


def _is_int(entry: CatalogEntry) -> bool:
    return entry.version.isdigit()


def _version_key(entry: CatalogEntry) -> tuple[int, int, float, str]:
    if _is_int(entry):
        return (1, int(entry.version), entry.registered_at, entry.version)
    return (0, 0, entry.registered_at, entry.version)


def _write_synced(path: Path, data: bytes) -> None:
    with path.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
