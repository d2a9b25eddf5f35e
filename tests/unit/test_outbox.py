"""The on-disk outbox: durability, removal by the hub's receipts, byte bound and drop policy."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from edge_node.delivery.outbox import Outbox, OutboxError, Priority
from schemas.codec import encode
from schemas.samples import SAMPLES

_SEQ = itertools.count()


def put(box: Outbox, *args: Any, boot: str = "b", **kwargs: Any) -> int | None:
    """``box.put`` with the next seq of ``boot``."""
    return box.put(*args, **kwargs, boot=boot, seq=next(_SEQ))


def test_messages_survive_reopen_until_removed(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_bytes=10_000)
    ids = [put(box, f"t/{i}", "result", bytes([i]) * 10, Priority.DATA) for i in range(5)]
    stored = [i for i in ids if i is not None]
    assert len(stored) == 5
    box.remove([stored[0], stored[2]])
    box.close()
    again = Outbox(tmp_path / "o.db", max_bytes=10_000)
    assert [e.topic for e in again.pending(10)] == ["t/1", "t/3", "t/4"]
    assert (again.depth, again.size_bytes) == (3, 30)


def test_pending_pages_by_id_in_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_bytes=10_000)
    ids = [put(box, "t", "result", b"x", Priority.DATA) for _ in range(6)]
    first = box.pending(4)
    assert [e.id for e in first] == ids[:4]
    assert [e.id for e in box.pending(4, after_id=first[-1].id)] == ids[4:]


def test_remove_of_unknown_id_changes_nothing(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_bytes=100)
    put(box, "t", "result", b"abc", Priority.DATA)
    assert box.remove([999]) == 0
    assert (box.depth, box.size_bytes) == (1, 3)


def test_full_outbox_drops_stats_before_data_before_events(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_bytes=100)
    put(box, "e", "event", b"e" * 30, Priority.EVENTS)
    put(box, "r", "result", b"r" * 30, Priority.DATA)
    put(box, "s", "telemetry", b"s" * 30, Priority.STATS)
    assert put(box, "r2", "result", b"R" * 30, Priority.DATA) is not None
    assert [e.topic for e in box.pending(10)] == ["e", "r", "r2"]
    assert box.dropped == {"telemetry": 1}
    assert put(box, "e2", "event", b"E" * 30, Priority.EVENTS) is not None
    assert [e.topic for e in box.pending(10)] == ["e", "r2", "e2"]
    assert box.dropped == {"telemetry": 1, "result": 1}
    assert box.size_bytes <= 100


def test_new_message_below_everything_stored_is_dropped_itself(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_bytes=60)
    put(box, "e", "event", b"e" * 30, Priority.EVENTS)
    put(box, "e", "event", b"e" * 30, Priority.EVENTS)
    assert put(box, "s", "telemetry", b"s" * 10, Priority.STATS) is None
    assert box.depth == 2
    assert box.dropped == {"telemetry": 1}


def test_protected_messages_are_not_dropped(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_bytes=60)
    first = put(box, "a", "result", b"a" * 30, Priority.DATA)
    put(box, "b", "result", b"b" * 30, Priority.DATA)
    assert first is not None
    put(box, "c", "result", b"c" * 30, Priority.DATA, handed_upto=first)
    assert [e.topic for e in box.pending(10)] == ["a", "c"]


def test_oversized_message_is_refused_and_counted(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_bytes=10)
    assert put(box, "t", "capture", b"x" * 11, Priority.DATA) is None
    assert box.dropped == {"capture": 1}


def test_drop_counts_survive_reopen(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_bytes=10)
    put(box, "t", "telemetry", b"x" * 11, Priority.STATS)
    box.close()
    assert Outbox(tmp_path / "o.db", max_bytes=10).dropped == {"telemetry": 1}


def test_write_failure_raises_outbox_error_and_keeps_totals(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_bytes=1000)
    put(box, "t", "result", b"x" * 10, Priority.DATA)
    other = sqlite3.connect(tmp_path / "o.db", timeout=0)
    other.execute("BEGIN EXCLUSIVE")  # a locked file stands in for a full or failing disk
    box._db.execute("PRAGMA busy_timeout = 0")
    with pytest.raises(OutboxError, match="cannot store result message"):
        put(box, "t", "result", b"y" * 10, Priority.DATA)
    other.rollback()
    assert (box.depth, box.size_bytes) == (1, 10)
    assert put(box, "t", "result", b"y" * 10, Priority.DATA) is not None


def test_rejects_nonpositive_bound(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        Outbox(tmp_path / "o.db", max_bytes=0)


def test_a_receipt_deletes_only_the_confirmed_seqs_of_its_boot(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_bytes=10_000)
    for seq in range(10):
        box.put("t", "result", b"x" * 10, Priority.DATA, boot="old", seq=seq)
        box.put("t", "result", b"y" * 10, Priority.DATA, boot="new", seq=seq)
    assert box.confirm("old", [(0, 3), (5, 7)]) == 5
    assert box.confirm("old", [(0, 3)]) == 0  # a repeated receipt changes nothing
    assert box.depth == 15 and box.size_bytes == 150
    left = {(r[0], r[1]) for r in sqlite3.connect(box.path).execute("SELECT boot, seq FROM outbox")}
    assert left == {("old", s) for s in (3, 4, 7, 8, 9)} | {("new", s) for s in range(10)}


def test_an_outbox_from_before_receipts_gets_boot_and_seq_from_its_payloads(
    tmp_path: Path,
) -> None:
    path = tmp_path / "o.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE outbox (id INTEGER PRIMARY KEY AUTOINCREMENT, topic TEXT NOT NULL, "
        "kind TEXT NOT NULL, priority INTEGER NOT NULL, payload BLOB NOT NULL);"
    )
    payload = encode(SAMPLES["result"])
    db.execute(
        "INSERT INTO outbox (topic, kind, priority, payload) VALUES ('t', 'result', 1, ?)",
        (payload,),
    )
    db.commit()
    db.close()
    box = Outbox(path, max_bytes=10_000)
    assert box.depth == 1
    sample: Any = SAMPLES["result"]
    assert box.confirm(sample.boot, [(sample.seq, sample.seq + 1)]) == 1
    assert box.depth == 0
