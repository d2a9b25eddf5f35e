"""The command ledger: every command issued and every ack seen; the only owner of ledger.db.

Two kinds of process write it at once: ``cloud-hub serve`` records every ack it ingests, the
CLI records the commands it issues and the acks it waits for. An ack is keyed by the node's
``(node, boot, seq)``, so when both see the same ack the second insert is ignored. WAL lets
readers go on while one writes; the busy timeout makes a writer wait for the other's commit.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import msgspec

from cloud_hub.store.sqlite_file import open_wal
from schemas.messages import Ack, Command, Deploy, ModelRef, Retrain, Rollback, Shadow

SCHEMA_VERSION: Final = 1
# ``issued_by`` of a command known only from its acks (sent by another tool).
NOT_RECORDED: Final = "(not in the ledger)"

_SCHEMA: Final = (
    """
CREATE TABLE IF NOT EXISTS commands (
    id          TEXT PRIMARY KEY,
    type        TEXT NOT NULL,
    node        TEXT NOT NULL,
    issued_at   REAL NOT NULL,
    expires_at  REAL NOT NULL,
    model       TEXT,
    version     TEXT,
    args        TEXT NOT NULL,
    issued_by   TEXT NOT NULL
)
""",
    "CREATE INDEX IF NOT EXISTS commands_by_node ON commands (node, issued_at)",
    """
CREATE TABLE IF NOT EXISTS acks (
    node          TEXT NOT NULL,
    boot          TEXT NOT NULL,
    seq           INTEGER NOT NULL,
    ts            REAL NOT NULL,
    command       TEXT NOT NULL,
    command_type  TEXT NOT NULL,
    status        TEXT NOT NULL,
    reason        TEXT NOT NULL,
    model         TEXT,
    version       TEXT,
    detail        TEXT NOT NULL,
    received_at   REAL NOT NULL,
    PRIMARY KEY (node, boot, seq)
)
""",
    "CREATE INDEX IF NOT EXISTS acks_by_command ON acks (command)",
)
_COMMAND_COLUMNS: Final = "id, type, node, issued_at, expires_at, model, version, args, issued_by"
_ACK_COLUMNS: Final = (
    "node, boot, seq, ts, command, command_type, status, reason, model, version, detail, "
    "received_at"
)


class LedgerError(RuntimeError):
    """The ledger file cannot be opened, read or written; the message names the file."""


@dataclass(frozen=True, slots=True)
class CommandRecord:
    """One issued command; ``args`` holds its type's own fields (chunk size, readings, ...)."""

    id: str
    type: str
    node: str
    issued_at: float
    expires_at: float
    model: ModelRef | None
    args: dict[str, Any]
    issued_by: str


@dataclass(frozen=True, slots=True)
class AckRecord:
    """One ack as received."""

    node: str
    boot: str
    seq: int
    ts: float
    command: str
    command_type: str
    status: str
    reason: str
    model: ModelRef | None
    detail: dict[str, str]
    received_at: float


@dataclass(frozen=True, slots=True)
class CommandHistory:
    """A command and its acks in the order the node sent them."""

    command: CommandRecord
    acks: list[AckRecord] = field(default_factory=list)

    @property
    def last(self) -> AckRecord | None:
        """The latest ack, or None before any."""
        return self.acks[-1] if self.acks else None


def record_of(command: Command, issued_by: str) -> CommandRecord:
    """The ledger record of ``command``."""
    model: ModelRef | None = None
    args: dict[str, Any] = {}
    if isinstance(command, Deploy | Shadow):
        model = ModelRef(command.manifest.name, command.manifest.version)
        args = {
            "size": command.size,
            "chunk_size": command.chunk_size,
            "chunks": command.chunks,
            "sha256": command.manifest.sha256,
        }
        if isinstance(command, Shadow):
            args |= {"duration_s": command.duration_s, "cpu_budget": command.cpu_budget}
    elif isinstance(command, Retrain):
        args = {"readings": command.readings, "mode": command.mode}
    elif isinstance(command, Rollback) and command.to is not None:
        args = {"to": command.to}
    tag = type(command).__struct_config__.tag
    return CommandRecord(
        id=command.id,
        type=str(tag),
        node=command.node,
        issued_at=command.issued_at,
        expires_at=command.expires_at,
        model=model,
        args=args,
        issued_by=issued_by,
    )


class Ledger:
    """The command ledger in one SQLite file."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self._db = open_wal(self.path)
            with self._db:
                for statement in _SCHEMA:
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(f"{self.path}: cannot open the command ledger: {exc}") from None

    def record_command(self, record: CommandRecord) -> None:
        """Add an issued command; LedgerError if its id is already taken."""
        model, version = _split(record.model)
        params = (
            record.id,
            record.type,
            record.node,
            record.issued_at,
            record.expires_at,
            model,
            version,
            msgspec.json.encode(record.args).decode(),
            record.issued_by,
        )
        self._write(f"INSERT INTO commands ({_COMMAND_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?)", params)

    def record_ack(self, ack: Ack, received_at: float) -> bool:
        """Add an ack unless this (node, boot, seq) is already there; True if it was new."""
        model, version = _split(ack.model)
        params = (
            ack.node,
            ack.boot,
            ack.seq,
            ack.ts,
            ack.command,
            ack.command_type,
            ack.status,
            ack.reason,
            model,
            version,
            msgspec.json.encode(ack.detail).decode(),
            received_at,
        )
        sql = f"INSERT OR IGNORE INTO acks ({_ACK_COLUMNS}) VALUES ({', '.join('?' * 12)})"
        return self._write(sql, params) == 1

    def command(self, command_id: str) -> CommandRecord | None:
        """The command with ``command_id``, or None."""
        rows = self._read(f"SELECT {_COMMAND_COLUMNS} FROM commands WHERE id = ?", (command_id,))
        return _command(rows[0]) if rows else None

    def commands(self, node: str | None = None, limit: int = 50) -> list[CommandHistory]:
        """The latest ``limit`` commands (of ``node``, if given), newest first, with their acks.

        Commands some other tool sent are known only from their acks; they are listed too,
        with ``issued_by`` :data:`NOT_RECORDED` and the time of their first ack.
        """
        where, params = ("WHERE node = ?", (node,)) if node is not None else ("", ())
        sql = f"SELECT {_COMMAND_COLUMNS} FROM commands {where} ORDER BY issued_at DESC, id LIMIT ?"
        records = [_command(r) for r in self._read(sql, (*params, limit))]
        records += self._unrecorded(node, limit)
        records.sort(key=lambda r: (-r.issued_at, r.id))
        records = records[:limit]
        acks: dict[tuple[str, str], list[AckRecord]] = {}
        for chunk in _batches(sorted({r.id for r in records}), 500):
            marks = ", ".join("?" * len(chunk))
            sql = f"SELECT {_ACK_COLUMNS} FROM acks WHERE command IN ({marks})"
            for row in self._read(sql, tuple(chunk)):
                ack = _ack(row)
                acks.setdefault((ack.command, ack.node), []).append(ack)
        for answers in acks.values():
            _in_node_order(answers)
        return [CommandHistory(r, acks.get((r.id, r.node), [])) for r in records]

    def _unrecorded(self, node: str | None, limit: int) -> list[CommandRecord]:
        """Commands seen only in acks, as records dated by their first ack."""
        where, params = ("AND node = ?", (node,)) if node is not None else ("", ())
        sql = (
            "SELECT command, node, MIN(command_type), MIN(ts) FROM acks "
            f"WHERE command NOT IN (SELECT id FROM commands) {where} "
            "GROUP BY command, node ORDER BY MIN(ts) DESC LIMIT ?"
        )
        return [
            CommandRecord(cid, typ, n, first, first, None, {}, NOT_RECORDED)
            for cid, n, typ, first in self._read(sql, (*params, limit))
        ]

    def close(self) -> None:
        """Close the connection (every write is already committed)."""
        self._db.close()

    def _write(self, sql: str, params: tuple[object, ...]) -> int:
        try:
            with self._db:
                return self._db.execute(sql, params).rowcount
        except sqlite3.IntegrityError as exc:
            raise LedgerError(f"{self.path}: {exc} (id {params[0]!r})") from None
        except sqlite3.Error as exc:
            raise LedgerError(f"{self.path}: cannot write the command ledger: {exc}") from None

    def _read(self, sql: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise LedgerError(f"{self.path}: cannot read the command ledger: {exc}") from None


def _split(model: ModelRef | None) -> tuple[str | None, str | None]:
    return (model.name, model.version) if model is not None else (None, None)


def _ref(name: str | None, version: str | None) -> ModelRef | None:
    return ModelRef(name, version) if name is not None and version is not None else None


def _command(row: tuple[Any, ...]) -> CommandRecord:
    cid, typ, node, issued, expires, model, version, args, issued_by = row
    return CommandRecord(
        id=cid,
        type=typ,
        node=node,
        issued_at=issued,
        expires_at=expires,
        model=_ref(model, version),
        args=msgspec.json.decode(args),
        issued_by=issued_by,
    )


def _in_node_order(acks: list[AckRecord]) -> None:
    """Sort one node's acks as it sent them: ``seq`` orders a boot, and boots follow each other
    in time (node clocks only order whole boots, so a clock step cannot reorder a boot)."""
    boot_start: dict[str, float] = {}
    for a in acks:
        boot_start[a.boot] = min(a.ts, boot_start.get(a.boot, a.ts))
    acks.sort(key=lambda a: (boot_start[a.boot], a.boot, a.seq))


def _ack(row: tuple[Any, ...]) -> AckRecord:
    node, boot, seq, ts, command, ctype, status, reason, model, version, detail, received = row
    return AckRecord(
        node=node,
        boot=boot,
        seq=seq,
        ts=ts,
        command=command,
        command_type=ctype,
        status=status,
        reason=reason,
        model=_ref(model, version),
        detail=msgspec.json.decode(detail, type=dict[str, str]),
        received_at=received,
    )


def _batches(items: list[str], size: int) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]
