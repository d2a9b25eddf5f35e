"""The fleet registry and the hub's durable ingest state in SQLite; the only module that opens
the hub's DB.

``nodes`` is the readable registry (``cloud-hub nodes``); ``node_state`` (a snapshot per node:
totals, status, reading coverage) and ``streams`` (the seqs seen per node and boot: the dedupe
state) are what ``serve`` starts from again. :meth:`Registry.commit` writes all three in one
transaction, and the hub acknowledges messages only after it returned.

WAL mode lets ``cloud-hub nodes`` read from another process while ``serve`` writes;
``synchronous=NORMAL`` is safe with WAL (a power cut may lose the last second of updates,
never corrupt the file), and the hub re-learns that second from the nodes anyway.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec

from cloud_hub.ingest.dedupe import Coverage
from cloud_hub.ingest.fleet import NodeState
from cloud_hub.ingest.snapshot import dump_coverage, dump_node, load_coverage, load_node
from schemas.messages import ModelRef

SCHEMA_VERSION: Final = 2
_STATE_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS node_state (node TEXT PRIMARY KEY, data BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS streams (
    node    TEXT NOT NULL,
    boot    TEXT NOT NULL,
    missing INTEGER NOT NULL,
    data    BLOB NOT NULL,
    PRIMARY KEY (node, boot)
) WITHOUT ROWID;
"""

_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS nodes (
    node            TEXT PRIMARY KEY,
    online          INTEGER,
    boot            TEXT NOT NULL,
    started_at      REAL,
    last_seen       REAL,
    active_model    TEXT,
    active_version  TEXT,
    capabilities    TEXT,
    readings        INTEGER NOT NULL,
    anomalies       INTEGER NOT NULL,
    latency_p99_ms  REAL,
    outbox_depth    INTEGER,
    drift_psi_max   REAL,
    updated_at      REAL NOT NULL,
    drift           TEXT
)
"""
_COLUMNS: Final = (
    "node, online, boot, started_at, last_seen, active_model, active_version, capabilities, "
    "readings, anomalies, latency_p99_ms, outbox_depth, drift_psi_max, updated_at, drift"
)
_UPSERT: Final = (
    f"INSERT INTO nodes ({_COLUMNS}) VALUES ({', '.join('?' * 15)}) "
    "ON CONFLICT(node) DO UPDATE SET "
    + ", ".join(f"{c} = excluded.{c}" for c in _COLUMNS.split(", ")[1:])
)


class RegistryError(RuntimeError):
    """The registry file cannot be opened or has an unexpected schema; names the file."""


@dataclass(frozen=True, slots=True)
class NodeRow:
    """One node as last written by the hub; ``online`` is None before its first status."""

    node: str
    online: bool | None
    boot: str
    started_at: float | None
    last_seen: float | None
    active_model: str | None
    active_version: str | None
    capabilities: dict[str, object] | None
    readings: int
    anomalies: int
    latency_p99_ms: float | None
    outbox_depth: int | None
    drift_psi_max: float | None
    updated_at: float
    drift: str | None = None  # "ok", or "watch: <channel>" / "drifting: <channel>"


def row_of(state: NodeState, updated_at: float) -> NodeRow:
    """The registry row for ``state``."""
    caps = msgspec.to_builtins(state.capabilities) if state.capabilities else None
    telemetry = state.telemetry
    return NodeRow(
        node=state.node,
        online=state.online,
        boot=state.boot,
        started_at=state.started_at,
        last_seen=state.last_seen,
        active_model=state.model.name if state.model else None,
        active_version=state.model.version if state.model else None,
        capabilities=caps,
        readings=state.readings,
        anomalies=state.anomalous,
        latency_p99_ms=telemetry.latency_p99_ms if telemetry else None,
        outbox_depth=telemetry.outbox_depth if telemetry else None,
        drift_psi_max=state.drift.psi_max if state.drift else None,
        updated_at=updated_at,
        drift=_drift_text(state),
    )


def _drift_text(state: NodeState) -> str | None:
    drift = state.drift.state if state.drift else None
    if drift is None:
        return None
    return drift.level if not drift.channel else f"{drift.level}: {drift.channel}"


class Registry:
    """SQLite fleet registry; ``readonly=True`` for readers in other processes."""

    def __init__(self, path: Path | str, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self._readonly = readonly
        try:
            self._db = self._connect()
        except sqlite3.Error as exc:
            raise RegistryError(f"{self.path}: cannot open the fleet registry: {exc}") from None

    def _connect(self) -> sqlite3.Connection:
        if self._readonly:
            if not self.path.exists():
                raise sqlite3.OperationalError("no such file (has cloud-hub serve run yet?)")
            return sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=5)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        with db:
            db.execute(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(nodes)")}
            if "drift" not in columns:  # a registry written before drift states
                db.execute("ALTER TABLE nodes ADD COLUMN drift TEXT")
            db.executescript(_STATE_SCHEMA)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        return db

    def commit(
        self, states: list[NodeState], streams: dict[tuple[str, str], Coverage], now: float
    ) -> None:
        """Write changed nodes (registry row and snapshot) and streams in one transaction."""
        rows = [_params(row_of(s, now)) for s in states]
        snapshots = [(s.node, dump_node(s)) for s in states]
        seen = [(n, b, c.missing(), dump_coverage(c)) for (n, b), c in streams.items()]
        try:
            with self._db:
                self._db.executemany(_UPSERT, rows)
                self._db.executemany("INSERT OR REPLACE INTO node_state VALUES (?, ?)", snapshots)
                self._db.executemany("INSERT OR REPLACE INTO streams VALUES (?, ?, ?, ?)", seen)
        except sqlite3.Error as exc:
            raise RegistryError(f"{self.path}: cannot commit ingest state: {exc}") from None

    def load_states(self) -> list[NodeState]:
        """Every node's stored state (empty for a new store)."""
        try:
            rows = self._db.execute("SELECT data FROM node_state ORDER BY rowid").fetchall()
        except sqlite3.Error as exc:
            raise RegistryError(f"{self.path}: cannot read the ingest state: {exc}") from None
        if rows:
            return [load_node(data) for (data,) in rows]
        # A store written before the hub kept its state: start from the registry's totals
        # (the seqs seen then were never stored, so a replay of that time counts again).
        return [_seed(row) for row in self.nodes()]

    def stream_gaps(self) -> dict[str, int]:
        """Per node, the seqs missing from its stored streams."""
        try:
            rows = self._db.execute("SELECT node, SUM(missing) FROM streams GROUP BY node")
            return {node: int(gaps) for node, gaps in rows.fetchall()}
        except sqlite3.Error as exc:
            raise RegistryError(f"{self.path}: cannot read the ingest state: {exc}") from None

    def load_stream(self, node: str, boot: str) -> Coverage | None:
        """The stored seqs seen of one node's boot, or None if it has none."""
        row = self._db.execute(
            "SELECT data FROM streams WHERE node = ? AND boot = ?", (node, boot)
        ).fetchone()
        return load_coverage(row[0]) if row else None

    def upsert_many(self, states: Iterable[NodeState], now: float) -> int:
        """Write several nodes in one transaction; return how many."""
        return self.write([row_of(s, now) for s in states])

    def write(self, rows: list[NodeRow]) -> int:
        """Write rows made by :func:`row_of` in one transaction; return how many."""
        params = [_params(row) for row in rows]
        if params:
            try:
                with self._db:
                    self._db.executemany(_UPSERT, params)
            except sqlite3.Error as exc:
                raise RegistryError(f"{self.path}: cannot write {len(rows)} nodes: {exc}") from None
        return len(rows)

    def nodes(self) -> list[NodeRow]:
        """Every node, sorted by id."""
        try:
            cursor = self._db.execute(f"SELECT {_COLUMNS} FROM nodes ORDER BY node")
            return [_row(r) for r in cursor.fetchall()]
        except sqlite3.Error as exc:
            raise RegistryError(f"{self.path}: cannot read nodes: {exc}") from None

    def close(self) -> None:
        """Close the connection (a writer's last transaction is already committed)."""
        self._db.close()


def _seed(row: NodeRow) -> NodeState:
    model = ModelRef(row.active_model, row.active_version or "") if row.active_model else None
    return NodeState(
        row.node,
        online=row.online,
        boot=row.boot,
        started_at=row.started_at,
        last_seen=row.last_seen,
        model=model,
        readings=row.readings,
        anomalous=row.anomalies,
    )


def _params(row: NodeRow) -> tuple[object, ...]:
    caps = msgspec.json.encode(row.capabilities).decode() if row.capabilities else None
    online = None if row.online is None else int(row.online)
    return (
        row.node,
        online,
        row.boot,
        row.started_at,
        row.last_seen,
        row.active_model,
        row.active_version,
        caps,
        row.readings,
        row.anomalies,
        row.latency_p99_ms,
        row.outbox_depth,
        row.drift_psi_max,
        row.updated_at,
        row.drift,
    )


def _row(values: tuple[Any, ...]) -> NodeRow:
    (node, online, boot, started, seen, model, version, caps, *rest) = values
    readings, anomalies, p99, depth, psi, updated, drift = rest
    return NodeRow(
        node=node,
        online=None if online is None else bool(online),
        boot=boot,
        started_at=started,
        last_seen=seen,
        active_model=model,
        active_version=version,
        capabilities=msgspec.json.decode(caps) if caps is not None else None,
        readings=readings,
        anomalies=anomalies,
        latency_p99_ms=p99,
        outbox_depth=depth,
        drift_psi_max=psi,
        updated_at=updated,
        drift=drift,
    )
