"""The on-disk outbox: the only code that writes queued messages to disk.

A message enters with :meth:`Outbox.put` and leaves through :meth:`Outbox.confirm`, which the node
calls with the hub's receipt naming the (boot, seq) ranges it durably applied; a PUBACK from the
broker is not delivery to the hub. It survives restarts of the node, and rows of earlier boots
are confirmed by their own receipts like any other.

Drop policy when the outbox would exceed ``max_bytes``: the oldest message of the lowest
priority goes first (telemetry and drift, then results and captures, then events and acks). A
new message that ranks below everything it would displace is dropped itself instead. Every drop
is counted by topic kind, and the counts are kept in the same file so they survive restarts.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

import msgspec

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    topic TEXT NOT NULL,
    kind TEXT NOT NULL,
    priority INTEGER NOT NULL,
    payload BLOB NOT NULL,
    boot TEXT NOT NULL DEFAULT '',
    seq INTEGER NOT NULL DEFAULT -1
);
CREATE INDEX IF NOT EXISTS outbox_drop_order ON outbox (priority, id);
CREATE TABLE IF NOT EXISTS dropped (kind TEXT PRIMARY KEY, count INTEGER NOT NULL);
"""
_STREAM_INDEX = "CREATE INDEX IF NOT EXISTS outbox_stream ON outbox (boot, seq)"


class _Env(msgspec.Struct):
    boot: str = ""
    seq: int = -1


_env_decoder = msgspec.msgpack.Decoder(_Env)


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
        self._migrate()
        self._db.execute(_STREAM_INDEX)
        row = self._db.execute("SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox")
        self._depth, self._bytes = row.fetchone()
        self._dropped = dict(self._db.execute("SELECT kind, count FROM dropped").fetchall())

    def _migrate(self) -> None:
        """Give the rows of an outbox from before receipts their (boot, seq), from the payload."""
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(outbox)")}
        if "seq" in columns:
            return
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            self._db.execute("ALTER TABLE outbox ADD COLUMN boot TEXT NOT NULL DEFAULT ''")
            self._db.execute("ALTER TABLE outbox ADD COLUMN seq INTEGER NOT NULL DEFAULT -1")
            rows = self._db.execute("SELECT id, payload FROM outbox").fetchall()
            for row_id, payload in rows:
                try:
                    env = _env_decoder.decode(payload)
                except msgspec.DecodeError:
                    env = _Env()  # not ours to judge: the hub rejects it, the policy drops it
                self._db.execute(
                    "UPDATE outbox SET boot = ?, seq = ? WHERE id = ?", (env.boot, env.seq, row_id)
                )
        log.info("outbox %s: %d queued messages now carry their (boot, seq)", self.path, len(rows))

    @property
    def depth(self) -> int:
        """Messages waiting for the hub's receipt."""
        return int(self._depth)

    @property
    def size_bytes(self) -> int:
        """Payload bytes waiting for the hub's receipt."""
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
        *,
        boot: str,
        seq: int,
    ) -> int | None:
        """Store message ``seq`` of ``boot``; return its id, or None when the policy dropped it.

        Messages with ids up to ``handed_upto`` have been handed to the MQTT client (in id
        order) and may be on their way to the hub, so the policy never drops them.
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
                    "INSERT INTO outbox (topic, kind, priority, payload, boot, seq) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (topic, kind, int(priority), payload, boot, seq),
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

    def oldest_id(self) -> int | None:
        """The id of the oldest message (None when empty)."""
        row = self._db.execute("SELECT MIN(id) FROM outbox").fetchone()
        return int(row[0]) if row[0] is not None else None

    def confirm(self, boot: str, ranges: Sequence[tuple[int, int]]) -> int:
        """Delete the messages of ``boot`` whose seq is in a half-open range; return how many."""
        where = " OR ".join("(seq >= ? AND seq < ?)" for _ in ranges)
        params = [boot, *(v for r in ranges for v in r)]
        if not where:
            return 0
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            gone = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox "
                f"WHERE boot = ? AND ({where})",
                params,
            ).fetchone()
            if gone[0]:
                self._db.execute(f"DELETE FROM outbox WHERE boot = ? AND ({where})", params)
        self._depth -= gone[0]
        self._bytes -= gone[1]
        return int(gone[0])

    def remove(self, ids: Iterable[int]) -> int:
        """Delete messages by id (the broker refused them for good); return how many were
        still there."""
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
