"""The fleet registry and the hub's durable ingest state in SQLite; the only module that opens
the hub's DB.

``nodes`` is the readable registry (``cloud-hub nodes``); ``node_state`` (a snapshot per node:
totals, status, reading coverage) with ``node_live`` and ``node_health`` (its parts that change
with nearly every message, and its telemetry: cloud_hub.store.rows) and ``streams`` (the seqs
seen per node and boot: the dedupe state) are what ``serve`` starts from again, with
``shadows`` (the newest shadow-run report per node, as its MessagePack).
:meth:`Registry.commit` writes them in one transaction, and the hub acknowledges messages only
after it returned.

WAL mode lets ``cloud-hub nodes`` read from another process while ``serve`` writes;
``synchronous=NORMAL`` is safe with WAL (a power cut may lose the last second of updates,
never corrupt the file), and the hub re-learns that second from the nodes anyway.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterable, Mapping, Set
from pathlib import Path
from typing import Any, Final

from cloud_hub.ingest.coverage import Coverage
from cloud_hub.ingest.fleet import NodeState
from cloud_hub.ingest.snapshot import (
    dump_coverage,
    dump_live,
    dump_node,
    load_coverage,
    load_node,
)
from cloud_hub.store.base import ShadowRows, StoreError, health_rows, whole_of
from cloud_hub.store.migrations import VERSION_TABLE, MigrationError, Step, latest, pending
from cloud_hub.store.rows import (
    COLUMNS,
    HEALTH_COLUMNS,
    LIVE_COLUMNS,
    SELECT_ROWS,
    SELECT_STATES,
    NodeRow,
    health_table,
    live_table,
    row_from_values,
    row_of,
    row_params,
    row_values,
    upsert,
)
from schemas.messages import ModelRef, ShadowReport

__all__ = ["SCHEMA_VERSION", "STEPS", "NodeRow", "Registry", "RegistryError", "row_of"]

_NODES_V1: Final = """
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
    updated_at      REAL NOT NULL
)
"""
# Ordered steps (cloud_hub.store.migrations); a hub.db made before the schema_version table
# is placed on them by what it holds (see _baseline).
STEPS: Final = (
    Step(1, "fleet registry: nodes", (_NODES_V1,)),
    Step(2, "drift state per node", ("ALTER TABLE nodes ADD COLUMN drift TEXT",)),
    Step(
        3,
        "durable ingest state: node snapshots and dedupe streams",
        (
            "CREATE TABLE IF NOT EXISTS node_state (node TEXT PRIMARY KEY, data BLOB NOT NULL)",
            """CREATE TABLE IF NOT EXISTS streams (
                node    TEXT NOT NULL,
                boot    TEXT NOT NULL,
                missing INTEGER NOT NULL,
                data    BLOB NOT NULL,
                PRIMARY KEY (node, boot)
            ) WITHOUT ROWID""",
        ),
    ),
    Step(
        4,
        "the newest shadow-run report per node",
        (
            "CREATE TABLE IF NOT EXISTS shadows "
            "(node TEXT PRIMARY KEY, ts REAL NOT NULL, data BLOB NOT NULL)",
        ),
    ),
    Step(
        5,
        "the parts of node snapshots that change with nearly every message, and telemetry",
        (
            live_table("REAL", "INTEGER", "BLOB") + " WITHOUT ROWID",
            health_table("INTEGER", "REAL", "BLOB") + " WITHOUT ROWID",
        ),
    ),
)
SCHEMA_VERSION: Final = latest(STEPS)
_VERSION_TABLE: Final = (
    f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} "
    "(version INTEGER PRIMARY KEY, description TEXT NOT NULL, applied_at REAL NOT NULL)"
)
_RECORD: Final = f"INSERT INTO {VERSION_TABLE} VALUES (?, ?, ?)"

_UPSERT: Final = upsert("nodes", COLUMNS, "?")
_WRITE_HEALTH: Final = (
    f"INSERT OR REPLACE INTO node_health ({HEALTH_COLUMNS}) VALUES ({', '.join('?' * 6)})"
)
_WRITE_LIVE: Final = (
    f"INSERT OR REPLACE INTO node_live ({LIVE_COLUMNS}) VALUES ({', '.join('?' * 10)})"
)


class RegistryError(StoreError):
    """The registry file cannot be opened or has an unexpected schema; names the file."""


class Registry:
    """SQLite fleet registry; ``readonly=True`` for readers in other processes."""

    def __init__(self, path: Path | str, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self._readonly = readonly
        self._shadows = ShadowRows()
        # Seeded from the registry rows of a store from before node_state: those nodes have no
        # snapshot yet, so every commit of this process writes them whole.
        self._seeded = False
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
        try:
            self._migrate(db)
        except MigrationError as exc:
            db.close()
            raise RegistryError(str(exc)) from None
        return db

    @property
    def location(self) -> str:
        """The SQLite file."""
        return str(self.path)

    def schema_version(self) -> int:
        """The highest migration recorded in the file."""
        (version,) = self._db.execute(f"SELECT MAX(version) FROM {VERSION_TABLE}").fetchone()
        return int(version or 0)

    def _migrate(self, db: sqlite3.Connection) -> None:
        """Run the steps the file lacks, each with its schema_version row in one transaction."""
        with db:
            db.execute(_VERSION_TABLE)
        (current,) = db.execute(f"SELECT MAX(version) FROM {VERSION_TABLE}").fetchone()
        if current is None:
            current = _baseline(db)
            found = [(s.version, f"{s.description} (found)", time.time()) for s in STEPS[:current]]
            with db:
                db.executemany(_RECORD, found)
        for step in pending(STEPS, current, str(self.path)):
            db.execute("BEGIN IMMEDIATE")  # DDL too: sqlite3 opens no transaction for it
            try:
                for statement in step.statements:
                    db.execute(statement)
                db.execute(_RECORD, (step.version, step.description, time.time()))
                db.execute(f"PRAGMA user_version={step.version}")
            except BaseException:
                db.rollback()
                raise
            db.commit()

    def commit(
        self,
        states: list[NodeState],
        streams: dict[tuple[str, str], Coverage],
        now: float,
        shadows: Mapping[str, ShadowReport] | None = None,
        *,
        profiles: Set[str] | None = None,
        healths: Set[str] | None = None,
    ) -> None:
        """Write changed nodes, streams, and the newer shadow reports of those nodes (from
        ``shadows``, the newest per node) in one transaction: see HubStore.commit."""
        whole = whole_of(states, None if self._seeded else profiles)
        rows = [row_values(s, now) for s in whole]
        snapshots = [(s.node, dump_node(s)) for s in whole]
        live = [dump_live(s, now) for s in states]
        health = health_rows(states, whole, healths)
        seen = [(n, b, c.missing(), dump_coverage(c)) for (n, b), c in streams.items()]
        reports = self._shadows.newer(states, shadows)
        db = self._db
        try:
            with db:
                if whole:
                    db.executemany(_UPSERT, rows)
                    db.executemany("INSERT OR REPLACE INTO node_state VALUES (?, ?)", snapshots)
                db.executemany(_WRITE_LIVE, live)
                if health:
                    db.executemany(_WRITE_HEALTH, health)
                db.executemany("INSERT OR REPLACE INTO streams VALUES (?, ?, ?, ?)", seen)
                if reports:
                    db.executemany("INSERT OR REPLACE INTO shadows VALUES (?, ?, ?)", reports)
        except sqlite3.Error as exc:
            raise RegistryError(f"{self.path}: cannot commit ingest state: {exc}") from None
        self._shadows.stored((node, ts) for node, ts, _ in reports)

    def load_shadows(self) -> dict[str, ShadowReport]:
        """The stored newest shadow report per node (a store from before shadows has none)."""
        try:
            rows = self._db.execute("SELECT node, data FROM shadows ORDER BY node").fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):  # read-only open of a store from before shadows
                return {}
            raise RegistryError(f"{self.path}: cannot read shadow reports: {exc}") from None
        except sqlite3.Error as exc:
            raise RegistryError(f"{self.path}: cannot read shadow reports: {exc}") from None
        return self._shadows.decode(rows, str(self.path))

    def load_states(self) -> list[NodeState]:
        """Every node's stored state (empty for a new store)."""
        try:
            rows = self._read(f"{SELECT_STATES} ORDER BY s.rowid", "SELECT data FROM node_state")
        except sqlite3.Error as exc:
            raise RegistryError(f"{self.path}: cannot read the ingest state: {exc}") from None
        if rows:
            return [load_node(data, live) for (data, *live) in rows]
        # A store written before the hub kept its state: start from the registry's totals
        # (the seqs seen then were never stored, so a replay of that time counts again).
        self._seeded = True
        return [_seed(row) for row in self.nodes()]

    def _read(self, sql: str, before_live: str) -> list[Any]:
        """Rows of ``sql``; a read-only open of a store from before node_live and node_health
        (which it cannot migrate) runs ``before_live`` instead."""
        try:
            return self._db.execute(sql).fetchall()
        except sqlite3.OperationalError as exc:
            missing = ("no such table: node_live", "no such table: node_health")
            if not (self._readonly and str(exc).startswith(missing)):
                raise
        return self._db.execute(before_live).fetchall()

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
        """Write several nodes' registry rows in one transaction; return how many. Rows only
        (for tools and tests): the live and health rows a commit wrote still overlay them."""
        return self.write([row_of(s, now) for s in states])

    def write(self, rows: list[NodeRow]) -> int:
        """Write rows made by :func:`row_of` in one transaction; return how many."""
        params = [row_params(row) for row in rows]
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
            rows = self._read(
                f"{SELECT_ROWS} ORDER BY n.node", f"SELECT {COLUMNS} FROM nodes ORDER BY node"
            )
            return [row_from_values(r) for r in rows]
        except sqlite3.Error as exc:
            raise RegistryError(f"{self.path}: cannot read nodes: {exc}") from None

    def close(self) -> None:
        """Close the connection (a writer's last transaction is already committed)."""
        self._db.close()


def _baseline(db: sqlite3.Connection) -> int:
    """The step a hub.db made before the schema_version table has reached, by what it holds."""
    tables = {name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    if "nodes" not in tables:
        return 0
    if "node_state" in tables and "streams" in tables:
        return 3
    columns = {row[1] for row in db.execute("PRAGMA table_info(nodes)")}
    return 2 if "drift" in columns else 1


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
