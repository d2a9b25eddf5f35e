"""The rollout store: rollouts, their nodes, decisions and requests; the only owner of rollouts.db.

The CLI writes a new rollout and a person's requests (pause, resume, abort); ``cloud-hub
serve`` takes the requests, drives the rollouts and writes their progress, so a restarted
``serve`` resumes each where it was. WAL and a busy timeout let both write, as for the ledger.
The schema carries a version (``PRAGMA user_version``); ``_MIGRATIONS[v]`` moves a file from
version ``v`` to ``v + 1``.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec

from cloud_hub.rollouts.state import ACTIVE, Decision, NodeRun, Rollout
from cloud_hub.store.sqlite_file import open_wal

SCHEMA_VERSION: Final = 1

_V1: Final = (
    """
CREATE TABLE rollouts (
    id            TEXT PRIMARY KEY,
    model         TEXT NOT NULL,
    version       TEXT NOT NULL,
    created_at    REAL NOT NULL,
    created_by    TEXT NOT NULL,
    waves         TEXT NOT NULL,
    bake_s        REAL NOT NULL,
    shadow_s      REAL NOT NULL,
    state         TEXT NOT NULL,
    phase         TEXT NOT NULL,
    wave          INTEGER NOT NULL,
    phase_started REAL NOT NULL,
    reason        TEXT NOT NULL
)
""",
    """
CREATE TABLE nodes (
    rollout     TEXT NOT NULL,
    node        TEXT NOT NULL,
    wave        INTEGER NOT NULL,
    step        TEXT NOT NULL,
    previous    TEXT NOT NULL,
    command     TEXT NOT NULL,
    switched_at REAL,
    reason      TEXT NOT NULL,
    before      TEXT,
    PRIMARY KEY (rollout, node)
)
""",
    "CREATE INDEX nodes_by_command ON nodes (command)",
    """
CREATE TABLE decisions (
    rollout TEXT NOT NULL,
    at      REAL NOT NULL,
    wave    INTEGER NOT NULL,
    kind    TEXT NOT NULL,
    passed  INTEGER,
    summary TEXT NOT NULL,
    detail  TEXT NOT NULL
)
""",
    "CREATE INDEX decisions_by_rollout ON decisions (rollout, at)",
    """
CREATE TABLE requests (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    rollout TEXT NOT NULL,
    action  TEXT NOT NULL,
    at      REAL NOT NULL,
    by      TEXT NOT NULL,
    taken   INTEGER NOT NULL DEFAULT 0
)
""",
)
# Statements that bring a file of version i (the index) to version i + 1.
_MIGRATIONS: Final[tuple[tuple[str, ...], ...]] = (_V1,)
_ROLLOUT_COLUMNS: Final = (
    "id, model, version, created_at, created_by, waves, bake_s, shadow_s, state, phase, wave, "
    "phase_started, reason"
)
_NODE_COLUMNS: Final = "rollout, node, wave, step, previous, command, switched_at, reason, before"


class RolloutStoreError(RuntimeError):
    """rollouts.db cannot be opened, read or written; the message names the file."""


@dataclass(frozen=True, slots=True)
class Request:
    """A person's request to a rollout: pause, resume or abort."""

    id: int
    rollout: str
    action: str
    at: float
    by: str


class RolloutStore:
    """Rollouts in one SQLite file."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self._db = open_wal(self.path)
            self._migrate()
        except (OSError, sqlite3.Error) as exc:
            raise RolloutStoreError(f"{self.path}: cannot open the rollout store: {exc}") from None

    def _migrate(self) -> None:
        with self._db:
            version = int(self._db.execute("PRAGMA user_version").fetchone()[0])
            if version > SCHEMA_VERSION:
                raise RolloutStoreError(
                    f"{self.path}: schema version {version} is newer than this hub's "
                    f"({SCHEMA_VERSION}); upgrade the hub"
                )
            for statements in _MIGRATIONS[version:]:
                for statement in statements:
                    self._db.execute(statement)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def create(self, rollout: Rollout) -> None:
        """Add a new rollout with its nodes; RolloutStoreError if its id is taken."""
        self.save(rollout, insert=True)

    def save(
        self, rollout: Rollout, decisions: Sequence[Decision] = (), *, insert: bool = False
    ) -> None:
        """Write the rollout's row, its changed nodes and ``decisions`` in one transaction."""
        verb = "INSERT" if insert else "INSERT OR REPLACE"
        row = (
            rollout.id,
            rollout.model,
            rollout.version,
            rollout.created_at,
            rollout.created_by,
            msgspec.json.encode(rollout.waves).decode(),
            rollout.bake_s,
            rollout.shadow_s,
            rollout.state,
            rollout.phase,
            rollout.wave,
            rollout.phase_started,
            rollout.reason,
        )
        nodes = [_node_row(rollout.id, rollout.nodes[n]) for n in sorted(rollout.dirty)]
        try:
            with self._db:
                marks = ", ".join("?" * len(row))
                self._db.execute(f"{verb} INTO rollouts ({_ROLLOUT_COLUMNS}) VALUES ({marks})", row)
                self._db.executemany(
                    f"INSERT OR REPLACE INTO nodes ({_NODE_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)",
                    nodes,
                )
                self._db.executemany(
                    "INSERT INTO decisions VALUES (?,?,?,?,?,?,?)",
                    [_decision_row(rollout.id, d) for d in decisions],
                )
        except sqlite3.IntegrityError:
            raise RolloutStoreError(f"{self.path}: rollout {rollout.id} exists already") from None
        except sqlite3.Error as exc:
            what = f"{self.path}: cannot write rollout {rollout.id}"
            raise RolloutStoreError(f"{what}: {exc}") from None
        rollout.dirty.clear()

    def load(self, rollout_id: str) -> Rollout | None:
        """The rollout with its nodes and decisions, or None."""
        rows = self._read(f"SELECT {_ROLLOUT_COLUMNS} FROM rollouts WHERE id = ?", (rollout_id,))
        if not rows:
            return None
        rollout = _rollout(rows[0])
        sql = f"SELECT {_NODE_COLUMNS} FROM nodes WHERE rollout = ?"
        for row in self._read(sql, (rollout_id,)):
            run = _node(row)
            rollout.nodes[run.node] = run
        sql = (
            "SELECT at, wave, kind, passed, summary, detail FROM decisions "
            "WHERE rollout = ? ORDER BY at, rowid"
        )
        rollout.decisions = [_decision(r) for r in self._read(sql, (rollout_id,))]
        return rollout

    def ids(self, states: frozenset[str] | None = None) -> list[str]:
        """Rollout ids, newest first (in ``states`` only, when given)."""
        rows = self._read("SELECT id, state FROM rollouts ORDER BY created_at DESC, id", ())
        return [i for i, s in rows if states is None or s in states]

    def active_ids(self) -> list[str]:
        """The rollouts ``serve`` drives: running or paused."""
        return self.ids(ACTIVE)

    def counts(self) -> dict[str, int]:
        """Rollouts by state."""
        return dict(self._read("SELECT state, COUNT(*) FROM rollouts GROUP BY state", ()))

    def request(self, rollout_id: str, action: str, at: float, by: str) -> None:
        """Queue a person's request for ``serve`` to take."""
        sql = "INSERT INTO requests (rollout, action, at, by) VALUES (?,?,?,?)"
        try:
            with self._db:
                self._db.execute(sql, (rollout_id, action, at, by))
        except sqlite3.Error as exc:
            raise RolloutStoreError(f"{self.path}: cannot write the request: {exc}") from None

    def take_requests(self) -> list[Request]:
        """Requests not yet taken, oldest first; they are marked taken."""
        try:
            with self._db:
                rows = self._db.execute(
                    "SELECT id, rollout, action, at, by FROM requests WHERE taken = 0 ORDER BY id"
                ).fetchall()
                self._db.executemany(
                    "UPDATE requests SET taken = 1 WHERE id = ?", [(r[0],) for r in rows]
                )
        except sqlite3.Error as exc:
            raise RolloutStoreError(f"{self.path}: cannot read requests: {exc}") from None
        return [Request(*row) for row in rows]

    def close(self) -> None:
        """Close the connection (every write is already committed)."""
        self._db.close()

    def _read(self, sql: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise RolloutStoreError(f"{self.path}: cannot read the rollout store: {exc}") from None


def _node_row(rollout_id: str, run: NodeRun) -> tuple[object, ...]:
    return (
        rollout_id,
        run.node,
        run.wave,
        run.step,
        run.previous,
        run.command,
        run.switched_at,
        run.reason,
        None if run.before is None else msgspec.json.encode(run.before).decode(),
    )


def _decision_row(rollout_id: str, d: Decision) -> tuple[object, ...]:
    passed = None if d.passed is None else int(d.passed)
    detail = msgspec.json.encode(d.detail).decode()
    return (rollout_id, d.at, d.wave, d.kind, passed, d.summary, detail)


def _rollout(row: tuple[Any, ...]) -> Rollout:
    (rid, model, version, created, by, waves, bake, shadow, state, phase, wave, started, why) = row
    return Rollout(
        id=rid,
        model=model,
        version=version,
        created_at=created,
        created_by=by,
        waves=msgspec.json.decode(waves, type=list[list[str]]),
        bake_s=bake,
        shadow_s=shadow,
        state=state,
        phase=phase,
        wave=wave,
        phase_started=started,
        reason=why,
    )


def _node(row: tuple[Any, ...]) -> NodeRun:
    _, node, wave, step, previous, command, switched_at, reason, before = row
    figures = None if before is None else msgspec.json.decode(before)
    return NodeRun(node, wave, step, previous, command, switched_at, reason, figures)


def _decision(row: tuple[Any, ...]) -> Decision:
    at, wave, kind, passed, summary, detail = row
    return Decision(
        at,
        wave,
        kind,
        None if passed is None else bool(passed),
        summary,
        msgspec.json.decode(detail),
    )
