"""The hub's store in PostgreSQL, shared by several hub processes; the only psycopg import.

The tables are those of the SQLite registry (``nodes``, ``node_state``, ``node_live``,
``streams``), so the snapshots are the same bytes (cloud_hub.ingest.snapshot, with the rows of
cloud_hub.store.rows). What differs is that several hubs
write them at once: a hub applies a batch inside :meth:`PostgresStore.locked`, a transaction
that first takes a transaction-scoped advisory lock per node (in one order, so two hubs
cannot deadlock), then reads those nodes' stored state, and writes the result before it
commits. Two hubs holding messages of one node therefore apply them one after the other,
each starting from what the other committed: dedupe by ``(node, boot, seq)``, totals and gap
counts are exactly those of one hub that received everything.

Advisory locks rather than ``SELECT … FOR UPDATE``: a node seen for the first time has no
row to lock yet, and an advisory lock on the hash of its id needs none. Two ids whose
hashes collide only share a lock (64-bit hashes: practically never).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence, Set
from contextlib import contextmanager
from typing import Any, Final

import psycopg
from psycopg.conninfo import conninfo_to_dict

from cloud_hub.ingest.coverage import Coverage
from cloud_hub.ingest.fleet import NodeState
from cloud_hub.ingest.snapshot import (
    dump_coverage,
    dump_live,
    dump_node,
    load_coverage,
    load_node,
)
from cloud_hub.store.base import Locked, ShadowRows, StoreError, health_rows, whole_of
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
    row_values,
    upsert,
)
from schemas.messages import ShadowReport

log = logging.getLogger(__name__)

STEPS: Final = (
    Step(
        1,
        "fleet registry, node snapshots and dedupe streams",
        (
            """CREATE TABLE nodes (
                node            TEXT PRIMARY KEY,
                online          INTEGER,
                boot            TEXT NOT NULL,
                started_at      DOUBLE PRECISION,
                last_seen       DOUBLE PRECISION,
                active_model    TEXT,
                active_version  TEXT,
                capabilities    TEXT,
                readings        BIGINT NOT NULL,
                anomalies       BIGINT NOT NULL,
                latency_p99_ms  DOUBLE PRECISION,
                outbox_depth    BIGINT,
                drift_psi_max   DOUBLE PRECISION,
                updated_at      DOUBLE PRECISION NOT NULL,
                drift           TEXT
            )""",
            "CREATE TABLE node_state (node TEXT PRIMARY KEY, data BYTEA NOT NULL)",
            """CREATE TABLE streams (
                node    TEXT NOT NULL,
                boot    TEXT NOT NULL,
                missing BIGINT NOT NULL,
                data    BYTEA NOT NULL,
                PRIMARY KEY (node, boot)
            )""",
        ),
    ),
    Step(
        2,
        "the newest shadow-run report per node",
        (
            "CREATE TABLE shadows "
            "(node TEXT PRIMARY KEY, ts DOUBLE PRECISION NOT NULL, data BYTEA NOT NULL)",
        ),
    ),
    Step(
        3,
        "the parts of node snapshots that change with nearly every message, and telemetry",
        (
            live_table("DOUBLE PRECISION", "BIGINT", "BYTEA"),
            health_table("BIGINT", "DOUBLE PRECISION", "BYTEA"),
        ),
    ),
)
SCHEMA_VERSION: Final = latest(STEPS)
# Held while migrating, so that hubs starting together run the steps once.
_MIGRATION_LOCK: Final = 0x6564_6765_6D6C  # "edgeml"
_VERSION_TABLE: Final = (
    f"CREATE TABLE IF NOT EXISTS {VERSION_TABLE} (version INTEGER PRIMARY KEY, "
    "description TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
)
_LOCK_NODES: Final = (
    "SELECT pg_advisory_xact_lock(k) FROM (SELECT DISTINCT hashtextextended(n, 0) AS k "
    "FROM unnest(%s::text[]) AS n ORDER BY k) AS ordered"
)
_UPSERT_ROW: Final = upsert("nodes", COLUMNS, "%s")
_UPSERT_STATE: Final = (
    "INSERT INTO node_state VALUES (%s, %s) ON CONFLICT (node) DO UPDATE SET data = excluded.data"
)
# The hub writing a node holds its lock and applied its messages to the stored state: what it
# writes is the newest (like node_state's).
_UPSERT_LIVE: Final = upsert("node_live", LIVE_COLUMNS, "%s")
_UPSERT_HEALTH: Final = upsert("node_health", HEALTH_COLUMNS, "%s")
_UPSERT_STREAM: Final = (
    "INSERT INTO streams VALUES (%s, %s, %s, %s) ON CONFLICT (node, boot) "
    "DO UPDATE SET missing = excluded.missing, data = excluded.data"
)
# Hubs of a group each write the reports they received: the newest by ``ts`` stays.
_UPSERT_SHADOW: Final = (
    "INSERT INTO shadows VALUES (%s, %s, %s) ON CONFLICT (node) "
    "DO UPDATE SET ts = excluded.ts, data = excluded.data WHERE shadows.ts <= excluded.ts"
)


def redacted(url: str) -> str:
    """``url`` without its password, for logs and errors."""
    try:
        info = conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "postgresql://<unparsable URL>"
    user = f"{info['user']}@" if info.get("user") else ""
    port = f":{info['port']}" if info.get("port") else ""
    return f"postgresql://{user}{info.get('host', '')}{port}/{info.get('dbname', '')}"


class PostgresStore:
    """The hub's state in PostgreSQL; one connection, used by the hub's main loop only."""

    def __init__(self, url: str, connect_timeout_s: int = 10) -> None:
        self._url = url
        self._timeout = connect_timeout_s
        self._where = redacted(url)
        self._holding = False  # inside locked(): never reconnect, the transaction is gone
        # Streams read ahead by locked() (the nodes' recent boots), served by load_stream.
        self._ahead: dict[tuple[str, str], bytes] = {}
        self._shadows = ShadowRows()
        self._db = self._connect()
        try:
            self._migrate()
        except MigrationError as exc:
            self._db.close()
            raise StoreError(str(exc)) from None

    @property
    def location(self) -> str:
        """The URL without its password."""
        return self._where

    def _connect(self) -> psycopg.Connection[Any]:
        try:
            return psycopg.connect(self._url, autocommit=True, connect_timeout=self._timeout)
        except psycopg.Error as exc:
            raise StoreError(f"{self._where}: cannot connect: {_first_line(exc)}") from None

    def _conn(self) -> psycopg.Connection[Any]:
        """The connection, opened again if the server or the network dropped it."""
        if (self._db.closed or self._db.broken) and not self._holding:
            log.warning("%s: connection lost; connecting again", self._where)
            self._db = self._connect()
        return self._db

    @contextmanager
    def _errors(self, doing: str) -> Iterator[None]:
        try:
            yield
        except psycopg.Error as exc:
            raise StoreError(f"{self._where}: cannot {doing}: {_first_line(exc)}") from None

    def _migrate(self) -> None:
        with self._errors("migrate the schema"), self._db.transaction():
            self._db.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            self._db.execute(_VERSION_TABLE)
            row = self._db.execute(f"SELECT MAX(version) FROM {VERSION_TABLE}").fetchone()
            current = int(row[0] or 0) if row else 0
            for step in pending(STEPS, current, self._where):
                for statement in step.statements:
                    self._db.execute(statement)
                self._db.execute(
                    f"INSERT INTO {VERSION_TABLE} (version, description) VALUES (%s, %s)",
                    (step.version, step.description),
                )
                log.info("%s: schema step %d: %s", self._where, step.version, step.description)

    def schema_version(self) -> int:
        """The highest migration recorded in the database."""
        with self._errors("read the schema version"):
            row = self._conn().execute(f"SELECT MAX(version) FROM {VERSION_TABLE}").fetchone()
        return int(row[0] or 0) if row else 0

    @contextmanager
    def locked(self, nodes: Sequence[str]) -> Iterator[Locked]:
        """A transaction holding ``nodes`` with their stored state (see the module docstring)."""
        db = self._conn()
        with self._errors(f"apply messages of {len(nodes)} nodes"), db.transaction():
            self._holding = True
            names = list(nodes)
            db.execute(_LOCK_NODES, (names,))
            rows = db.execute(f"{SELECT_STATES} WHERE s.node = ANY(%s)", (names,))
            states = [load_node(data, live) for (data, *live) in rows.fetchall()]
            gaps = db.execute(
                "SELECT node, SUM(missing) FROM streams WHERE node = ANY(%s) GROUP BY node",
                (names,),
            ).fetchall()
            self._read_ahead(db, states)
            try:
                yield Locked(states, {node: int(n) for node, n in gaps})
            finally:
                self._holding = False
                self._ahead = {}

    def _read_ahead(self, db: psycopg.Connection[Any], states: list[NodeState]) -> None:
        """Read the streams of the nodes' recent boots in one query rather than one each."""
        keys = sorted({(s.node, boot) for s in states for boot in (s.boot, *s.coverage) if boot})
        if not keys:
            return
        rows = db.execute(
            "SELECT s.node, s.boot, s.data FROM streams AS s "
            "JOIN unnest(%s::text[], %s::text[]) AS k(node, boot) "
            "ON s.node = k.node AND s.boot = k.boot",
            ([n for n, _ in keys], [b for _, b in keys]),
        )
        self._ahead = {(node, boot): data for node, boot, data in rows.fetchall()}

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
        """Write changed nodes, streams and the newer shadow reports of those nodes in one
        transaction (inside :meth:`locked`, in its transaction): see HubStore.commit."""
        whole = whole_of(states, profiles)
        rows = [row_values(s, now) for s in whole]
        snapshots = [(s.node, dump_node(s)) for s in whole]
        live = [dump_live(s, now) for s in states]
        health = health_rows(states, whole, healths)
        seen = [(n, b, c.missing(), dump_coverage(c)) for (n, b), c in streams.items()]
        reports = self._shadows.newer(states, shadows)
        db = self._conn()
        with self._errors("commit ingest state"), db.transaction(), db.cursor() as cursor:
            for statement, params in (
                (_UPSERT_ROW, rows),
                (_UPSERT_STATE, snapshots),
                (_UPSERT_LIVE, live),
                (_UPSERT_HEALTH, health),
                (_UPSERT_STREAM, seen),
                (_UPSERT_SHADOW, reports),
            ):
                if params:
                    cursor.executemany(statement, params)
        self._shadows.stored((node, ts) for node, ts, _ in reports)

    def load_shadows(self) -> dict[str, ShadowReport]:
        """The stored newest shadow report per node."""
        with self._errors("read shadow reports"):
            rows = self._conn().execute("SELECT node, data FROM shadows ORDER BY node").fetchall()
        return self._shadows.decode(rows, self._where)

    def load_states(self) -> list[NodeState]:
        """Every node's stored state (empty for a new store)."""
        with self._errors("read the ingest state"):
            rows = self._conn().execute(f"{SELECT_STATES} ORDER BY s.node").fetchall()
        return [load_node(data, live) for (data, *live) in rows]

    def stream_gaps(self) -> dict[str, int]:
        """Per node, the seqs missing from its stored streams."""
        with self._errors("read the ingest state"):
            rows = self._conn().execute("SELECT node, SUM(missing) FROM streams GROUP BY node")
            return {node: int(gaps) for node, gaps in rows.fetchall()}

    def load_stream(self, node: str, boot: str) -> Coverage | None:
        """The stored seqs seen of one node's boot, or None if it has none."""
        ahead = self._ahead.pop((node, boot), None)
        if ahead is not None:
            return load_coverage(ahead)
        with self._errors("read a stream"):
            row = (
                self._conn()
                .execute("SELECT data FROM streams WHERE node = %s AND boot = %s", (node, boot))
                .fetchone()
            )
        return load_coverage(row[0]) if row else None

    def nodes(self) -> list[NodeRow]:
        """Every node's registry row, sorted by id."""
        with self._errors("read nodes"):
            rows = self._conn().execute(f"{SELECT_ROWS} ORDER BY n.node").fetchall()
        return [row_from_values(tuple(r)) for r in rows]

    def close(self) -> None:
        """Close the connection (the last transaction is already committed)."""
        self._db.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
