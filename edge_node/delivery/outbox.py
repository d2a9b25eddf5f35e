"""The on-disk outbox: the only code that writes queued messages to disk.

A message enters with :meth:`Outbox.put` and leaves only through :meth:`Outbox.remove`, which the
node calls when the broker has acknowledged it (PUBACK). It survives restarts of the node.

Drop policy when the outbox would exceed ``max_bytes``: the oldest message of the lowest
priority goes first (telemetry and drift, then results and captures, then events and acks). A
new message that ranks below everything it would displace is dropped itself instead. Every drop
is counted by topic kind, and the counts are kept in the same file so they survive restarts.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    kind TEXT NOT NULL,
    priority INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS outbox_drop_order ON outbox (priority, id);
CREATE TABLE IF NOT EXISTS dropped (kind TEXT PRIMARY KEY, count INTEGER NOT NULL);
"""


class Priority(IntEnum):
    """Which messages the outbox gives up first when it is full (lowest first)."""

    STATS = 0
    DATA = 1
    EVENTS = 2


@dataclass(frozen=True, slots=True)
class Entry:
    id: int
    topic: str
    payload: bytes


class OutboxError(Exception):
    """The outbox could not store a message (disk full, file unusable)."""


class Outbox:
    """A bounded, durable FIFO of (topic, payload) with priority-based dropping."""

    def __init__(self, path: Path, max_bytes: int) -> None:
        if max_bytes <= 0:
            raise ValueError(f"outbox max_bytes must be > 0, got {max_bytes}")
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.max_bytes = max_bytes
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # WAL + NORMAL: a commit survives a crash of the process; only a power cut can lose the
        # last commits, and that costs no fsync per message.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox")
        self._depth, self._bytes = row.fetchone()
        self._dropped = dict(self._db.execute("SELECT kind, count FROM dropped").fetchall())

    @property
    def depth(self) -> int:
        """Messages waiting for a PUBACK."""
        return int(self._depth)

    @property
    def size_bytes(self) -> int:
        """Payload bytes waiting for a PUBACK."""
        return int(self._bytes)

    @property
    def dropped(self) -> dict[str, int]:
        """Messages dropped by the policy since the file was created, by topic kind."""
        return dict(self._dropped)

    def put(
        self,
        topic: str,
        kind: str,
        payload: bytes,
        priority: Priority,
        handed_upto: int = 0,
    ) -> int | None:
        """Store a message; return its id, or None when the policy dropped it instead.

        Messages with ids up to ``handed_upto`` are with the MQTT client (it is handed them in id
        order, and they leave the outbox on their PUBACK), so the policy never drops them.
        """
        size = len(payload)
        if size > self.max_bytes:
            log.warning(
                "outbox: %s message of %d bytes exceeds max_bytes=%d; dropped",
                kind,
                size,
                self.max_bytes,
            )
            self._count_drops({kind: 1})
            return None
        try:
            with self._db:
                self._db.execute("BEGIN IMMEDIATE")
                if not self._make_room(size, priority, handed_upto):
                    self._count_drops({kind: 1}, in_transaction=True)
                    return None
                cur = self._db.execute(
                    "INSERT INTO outbox (topic, kind, priority, payload) VALUES (?, ?, ?, ?)",
                    (topic, kind, int(priority), payload),
                )
        except sqlite3.Error as exc:
            self._reload_totals()
            raise OutboxError(f"outbox {self.path}: cannot store {kind} message: {exc}") from exc
        self._depth += 1
        self._bytes += size
        assert cur.lastrowid is not None
        return cur.lastrowid

    def pending(self, limit: int, after_id: int = 0) -> list[Entry]:
        """The oldest ``limit`` messages with ids above ``after_id``."""
        rows = self._db.execute(
            "SELECT id, topic, payload FROM outbox WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        )
        return [Entry(i, t, p) for i, t, p in rows]

    def remove(self, ids: Iterable[int]) -> int:
        """Delete acknowledged messages; return how many were still there."""
        ids = list(ids)
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            gone = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox "
                f"WHERE id IN ({marks})",
                ids,
            ).fetchone()
            self._db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", ids)
        self._depth -= gone[0]
        self._bytes -= gone[1]
        return int(gone[0])

    def close(self) -> None:
        self._db.close()

    def _make_room(self, size: int, priority: Priority, handed_upto: int) -> bool:
        """Drop old messages until ``size`` more bytes fit; False if the new one must go."""
        need = self._bytes + size - self.max_bytes
        if need <= 0:
            return True
        victims: list[int] = []
        freed = 0
        drops: dict[str, int] = {}
        rows = self._db.execute(
            "SELECT id, kind, priority, LENGTH(payload) FROM outbox WHERE id > ? "
            "ORDER BY priority, id",
            (handed_upto,),
        )
        for row_id, kind, row_priority, length in rows:
            if row_priority > priority:
                return False
            victims.append(row_id)
            drops[kind] = drops.get(kind, 0) + 1
            freed += length
            if freed >= need:
                break
        else:
            return False
        marks = ",".join("?" * len(victims))
        self._db.execute(f"DELETE FROM outbox WHERE id IN ({marks})", victims)
        self._depth -= len(victims)
        self._bytes -= freed
        self._count_drops(drops, in_transaction=True)
        log.warning("outbox full (%d bytes): dropped %s", self.max_bytes, drops)
        return True

    def _count_drops(self, drops: dict[str, int], in_transaction: bool = False) -> None:
        sql = (
            "INSERT INTO dropped (kind, count) VALUES (?, ?) "
            "ON CONFLICT(kind) DO UPDATE SET count = count + excluded.count"
        )
        if in_transaction:
            self._db.executemany(sql, drops.items())
        else:
            with self._db:
                self._db.executemany(sql, drops.items())
        for kind, n in drops.items():
            self._dropped[kind] = self._dropped.get(kind, 0) + n

    def _reload_totals(self) -> None:
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox")
        self._depth, self._bytes = row.fetchone()
        self._dropped = dict(self._db.execute("SELECT kind, count FROM dropped").fetchall())
