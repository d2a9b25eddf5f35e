"""The on-disk outbox: durability, PUBACK-only removal, byte bound and drop policy."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edge_node.delivery.outbox import Outbox, OutboxError, Priority


def test_messages_survive_reopen_until_removed(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_bytes=10_000)
    ids = [box.put(f"t/{i}", "result", bytes([i]) * 10, Priority.DATA) for i in range(5)]
    stored = [i for i in ids if i is not None]
    assert len(stored) == 5
    box.remove([stored[0], stored[2]])
    box.close()
    again = Outbox(tmp_path / "o.db", max_bytes=10_000)
    assert [e.topic for e in again.pending(10)] == ["t/1", "t/3", "t/4"]
    assert (again.depth, again.size_bytes) == (3, 30)


def test_pending_pages_by_id_in_order(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_bytes=10_000)
    ids = [box.put("t", "result", b"x", Priority.DATA) for _ in range(6)]
    first = box.pending(4)
    assert [e.id for e in first] == ids[:4]
    assert [e.id for e in box.pending(4, after_id=first[-1].id)] == ids[4:]


def test_remove_of_unknown_id_changes_nothing(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_bytes=100)
    box.put("t", "result", b"abc", Priority.DATA)
    assert box.remove([999]) == 0
    assert (box.depth, box.size_bytes) == (1, 3)


def test_full_outbox_drops_stats_before_data_before_events(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_bytes=100)
    box.put("e", "event", b"e" * 30, Priority.EVENTS)
    box.put("r", "result", b"r" * 30, Priority.DATA)
    box.put("s", "telemetry", b"s" * 30, Priority.STATS)
    assert box.put("r2", "result", b"R" * 30, Priority.DATA) is not None
    assert [e.topic for e in box.pending(10)] == ["e", "r", "r2"]
    assert box.dropped == {"telemetry": 1}
    assert box.put("e2", "event", b"E" * 30, Priority.EVENTS) is not None
    assert [e.topic for e in box.pending(10)] == ["e", "r2", "e2"]
    assert box.dropped == {"telemetry": 1, "result": 1}
    assert box.size_bytes <= 100


def test_new_message_below_everything_stored_is_dropped_itself(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_bytes=60)
    box.put("e", "event", b"e" * 30, Priority.EVENTS)
    box.put("e", "event", b"e" * 30, Priority.EVENTS)
    assert box.put("s", "telemetry", b"s" * 10, Priority.STATS) is None
    assert box.depth == 2
    assert box.dropped == {"telemetry": 1}


def test_protected_messages_are_not_dropped(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_bytes=60)
    first = box.put("a", "result", b"a" * 30, Priority.DATA)
    box.put("b", "result", b"b" * 30, Priority.DATA)
    assert first is not None
    box.put("c", "result", b"c" * 30, Priority.DATA, handed_upto=first)
    assert [e.topic for e in box.pending(10)] == ["a", "c"]


def test_oversized_message_is_refused_and_counted(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_bytes=10)
    assert box.put("t", "capture", b"x" * 11, Priority.DATA) is None
    assert box.dropped == {"capture": 1}


def test_drop_counts_survive_reopen(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_bytes=10)
    box.put("t", "telemetry", b"x" * 11, Priority.STATS)
    box.close()
    assert Outbox(tmp_path / "o.db", max_bytes=10).dropped == {"telemetry": 1}


def test_write_failure_raises_outbox_error_and_keeps_totals(tmp_path: Path) -> None:
    box = Outbox(tmp_path / "o.db", max_bytes=1000)
    box.put("t", "result", b"x" * 10, Priority.DATA)
    other = sqlite3.connect(tmp_path / "o.db", timeout=0)
    other.execute("BEGIN EXCLUSIVE")  # a locked file stands in for a full or failing disk
    box._db.execute("PRAGMA busy_timeout = 0")
    with pytest.raises(OutboxError, match="cannot store result message"):
        box.put("t", "result", b"y" * 10, Priority.DATA)
    other.rollback()
    assert (box.depth, box.size_bytes) == (1, 10)
    assert box.put("t", "result", b"y" * 10, Priority.DATA) is not None


def test_rejects_nonpositive_bound(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="max_bytes"):
        Outbox(tmp_path / "o.db", max_bytes=0)
