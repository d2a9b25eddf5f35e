"""The hub's anomaly and sensor-fault episodes in SQLite; the only module that opens its file.

One row per episode, keyed by node, boot, model and kind (machine or sensor) and the node's
episode number: the open event inserts it, the close event completes it (a close without its
open, e.g. after a hub restart, inserts a closed row). Retention is bounded: episodes that
ended (or, while open, started) more than ``retention_s`` ago are deleted, and at most
``max_rows`` are kept, oldest first out. Indexed by node and start time for
``cloud-hub events``. WAL mode, as the registry, so the command reads while ``serve`` writes.

Open episodes per node and kind are also kept in memory (:class:`OpenEpisodes`) for the
metrics, so a scrape never touches the database.
"""

from __future__ import annotations

import logging
import math
import sqlite3
import threading
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import msgspec

from schemas.messages import ChannelShare, Event

log = logging.getLogger(__name__)

SCHEMA_VERSION: Final = 1
RETENTION_S: Final = 30 * 86_400.0
MAX_ROWS: Final = 100_000

_SCHEMA: Final = (
    """
CREATE TABLE IF NOT EXISTS events (
    node        TEXT NOT NULL,
    boot        TEXT NOT NULL,
    model       TEXT NOT NULL,
    version     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    episode     INTEGER NOT NULL,
    started     REAL NOT NULL,
    ended       REAL,
    severity    TEXT NOT NULL,
    peak_score  REAL NOT NULL,
    threshold   REAL NOT NULL,
    readings    INTEGER NOT NULL,
    channels    TEXT NOT NULL,
    channel     TEXT NOT NULL,
    fault       TEXT NOT NULL,
    received    REAL NOT NULL,
    PRIMARY KEY (node, boot, model, version, kind, episode)
)""",
    "CREATE INDEX IF NOT EXISTS events_node_started ON events (node, started)",
    "CREATE INDEX IF NOT EXISTS events_started ON events (started)",
)
_COLUMNS: Final = (
    "node, boot, model, version, kind, episode, started, ended, severity, peak_score, "
    "threshold, readings, channels, channel, fault, received"
)
# A close overwrites what the open said; an open never overwrites a close that came first.
_UPSERT: Final = (
    f"INSERT INTO events ({_COLUMNS}) VALUES ({', '.join('?' * 16)}) "
    "ON CONFLICT(node, boot, model, version, kind, episode) DO UPDATE SET "
    + ", ".join(
        f"{c} = excluded.{c}"
        for c in ("ended", "severity", "peak_score", "readings", "channels", "received")
    )
    + " WHERE excluded.ended IS NOT NULL"
)


# An open episode in OpenEpisodes: model, version, kind, number; the kind's index in a node's
# tuple (after its boot).
_STRIDE: Final = 4
_KIND: Final = 3


class EventStoreError(RuntimeError):
    """The events file cannot be opened, read or written; names the file."""


@dataclass(frozen=True, slots=True)
class EpisodeRow:
    """One episode as the hub stored it; ``ended`` is None while it is open."""

    node: str
    model: str
    version: str
    kind: str
    episode: int
    started: float
    ended: float | None
    severity: str
    peak_score: float
    threshold: float
    readings: int
    channels: list[ChannelShare]
    channel: str
    fault: str


class OpenEpisodes:
    """Episodes open now, per node and kind (thread-safe: the ingest loop writes, scrapes read).

    A node's new boot forgets its old boot's episodes (a crash never sent their close)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # Per node one flat tuple: its boot, then model, version, kind and number of each
        # episode open (``_STRIDE`` items each). A tuple rather than a list of keys, and no
        # dict of boots apart: a node with one episode open costs 80 bytes, not 260 (10,000
        # nodes per hub). Events are rare: rebuilding it on each costs nothing.
        self._open: dict[str, tuple[str | int, ...]] = {}

    def apply(self, event: Event) -> None:
        """Note an episode opening or closing."""
        key = (event.model.name, event.model.version, event.kind, event.episode)
        with self._lock:
            kept = self._open.get(event.node)
            episodes = []
            if kept is not None and kept[0] == event.boot:
                episodes = [kept[i : i + _STRIDE] for i in range(1, len(kept), _STRIDE)]
            if event.state == "open":
                if key not in episodes:
                    episodes.append(key)
            elif key in episodes:
                episodes.remove(key)
            self._open[event.node] = (event.boot, *(item for k in episodes for item in k))

    def open_now(self) -> dict[tuple[str, str], int]:
        """(node, kind) -> episodes open, only where some are (cheap at 10,000 nodes)."""
        with self._lock:
            out: dict[tuple[str, str], int] = {}
            for node, kept in self._open.items():
                for kind in kept[_KIND::_STRIDE]:
                    key = (node, str(kind))
                    out[key] = out.get(key, 0) + 1
            return out

    def counts(self) -> dict[tuple[str, str], int]:
        """(node, kind) -> episodes open, for every node seen (0 included) and both kinds."""
        with self._lock:
            out: dict[tuple[str, str], int] = {}
            for node, kept in self._open.items():
                kinds = Counter(kept[_KIND::_STRIDE])
                for kind in ("machine", "sensor"):
                    out[node, kind] = kinds[kind]
            return out


class EventStore:
    """SQLite episode store; ``readonly=True`` for readers in other processes."""

    def __init__(
        self,
        path: Path | str,
        *,
        readonly: bool = False,
        retention_s: float = RETENTION_S,
        max_rows: int = MAX_ROWS,
    ) -> None:
        self.path = Path(path)
        self.retention_s = retention_s
        self.max_rows = max_rows
        try:
            self._db = self._connect(readonly)
        except sqlite3.Error as exc:
            raise EventStoreError(f"{self.path}: cannot open the events store: {exc}") from None

    def _connect(self, readonly: bool) -> sqlite3.Connection:
        if readonly:
            if not self.path.exists():
                raise sqlite3.OperationalError("no such file (has cloud-hub serve run yet?)")
            return sqlite3.connect(f"{self.path.resolve().as_uri()}?mode=ro", uri=True, timeout=5)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=5, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        with db:
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        return db

    def record(self, event: Event, now: float) -> None:
        """Store an episode's open or close (``now``: the hub's receive time)."""
        channels = msgspec.json.encode(event.channels).decode()
        params = (
            event.node, event.boot, event.model.name, event.model.version, event.kind,
            event.episode, event.started, event.ended if event.state == "close" else None,
            event.severity, event.peak_score, event.threshold, event.readings, channels,
            event.channel, event.fault, now,
        )  # fmt: skip
        try:
            with self._db:
                self._db.execute(_UPSERT, params)
        except sqlite3.Error as exc:
            raise EventStoreError(f"{self.path}: cannot write an event: {exc}") from None

    def prune(self, now: float) -> int:
        """Apply the retention; return how many episodes were deleted."""
        cutoff = now - self.retention_s
        try:
            with self._db:
                old = self._db.execute(
                    "DELETE FROM events WHERE COALESCE(ended, started) < ?", (cutoff,)
                ).rowcount
                over = self._db.execute(
                    "DELETE FROM events WHERE rowid IN (SELECT rowid FROM events "
                    "ORDER BY started DESC LIMIT -1 OFFSET ?)",
                    (self.max_rows,),
                ).rowcount
        except sqlite3.Error as exc:
            raise EventStoreError(f"{self.path}: cannot prune events: {exc}") from None
        return int(old) + int(over)

    def query(
        self,
        *,
        node: str | None = None,
        since: float | None = None,
        open_only: bool = False,
        limit: int = 1000,
    ) -> list[EpisodeRow]:
        """Episodes, newest first: of ``node``, active at or after ``since``, open ones only."""
        where: list[str] = ["1 = 1"]
        args: list[object] = []
        if node is not None:
            where.append("node = ?")
            args.append(node)
        if since is not None:
            where.append("COALESCE(ended, started) >= ?")
            args.append(since)
        if open_only:
            where.append("ended IS NULL")
        sql = (
            f"SELECT {_COLUMNS} FROM events WHERE {' AND '.join(where)} "
            "ORDER BY started DESC, node LIMIT ?"
        )
        try:
            rows = self._db.execute(sql, (*args, limit)).fetchall()
        except sqlite3.Error as exc:
            raise EventStoreError(f"{self.path}: cannot read events: {exc}") from None
        return [_row(r) for r in rows]

    def close(self) -> None:
        """Close the connection."""
        self._db.close()


def _row(r: tuple[object, ...]) -> EpisodeRow:
    node, _boot, model, version, kind, episode, started, ended, severity = r[:9]
    peak, threshold, readings, channels, channel, fault = r[9:15]
    return EpisodeRow(
        node=str(node),
        model=str(model),
        version=str(version),
        kind=str(kind),
        episode=int(str(episode)),
        started=float(str(started)),
        ended=None if ended is None else float(str(ended)),
        severity=str(severity),
        peak_score=float(str(peak)),
        threshold=float(str(threshold)),
        readings=int(str(readings)),
        channels=msgspec.json.decode(str(channels), type=list[ChannelShare]),
        channel=str(channel),
        fault=str(fault),
    )


class EpisodeSink:
    """What the hub does with each event: track open episodes in memory and, with a ``store``,
    keep the episode (a store failure is counted and logged; ingest goes on)."""

    def __init__(self, store: EventStore | None = None, prune_every_s: float = 3600.0) -> None:
        self.open = OpenEpisodes()
        self.store = store
        self.errors = 0
        self._prune_every_s = prune_every_s
        self._next_prune = -math.inf

    def on_event(self, event: Event, now: float) -> None:
        """Apply one new (deduplicated) event."""
        self.open.apply(event)
        if self.store is None:
            return
        try:
            self.store.record(event, now)
            if now >= self._next_prune:
                self._next_prune = now + self._prune_every_s
                self.store.prune(now)
        except EventStoreError as exc:
            self.errors += 1
            log.warning("%s", exc)
