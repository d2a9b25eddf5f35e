"""How the hub's SQLite files are opened: one place for the settings every one of them uses."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Final

# serve and a CLI command may write one file at once: wait for the other's transaction.
BUSY_TIMEOUT_MS: Final = 10_000


def open_wal(path: Path, *, autocommit: bool = False) -> sqlite3.Connection:
    """A connection to ``path`` (its folder made if needed) in WAL mode with
    ``synchronous=NORMAL`` (a power cut may lose the last commits, never corrupt the file) and
    a busy timeout. ``autocommit``: no implicit transactions (the caller opens its own)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(
        path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None if autocommit else "DEFERRED"
    )
    db.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=NORMAL")
    return db
