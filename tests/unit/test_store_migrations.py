"""Migrations: ordered steps, a newer store refused, and today's hub.db files upgraded in place
(SQLite, no server needed); the shared-subscription filters and the settings that select
them."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cloud_hub.config import load_hub_config
from cloud_hub.ingest.registry import STEPS, Registry, RegistryError
from cloud_hub.ingest.transport import hub_filter
from cloud_hub.store.base import StoreError, node_ids, open_store
from cloud_hub.store.migrations import MigrationError, Step, pending
from schemas.settings import SettingsError
from schemas.topics import Kind

NODES_V1 = """CREATE TABLE nodes (node TEXT PRIMARY KEY, online INTEGER, boot TEXT NOT NULL,
    started_at REAL, last_seen REAL, active_model TEXT, active_version TEXT, capabilities TEXT,
    readings INTEGER NOT NULL, anomalies INTEGER NOT NULL, latency_p99_ms REAL,
    outbox_depth INTEGER, drift_psi_max REAL, updated_at REAL NOT NULL)"""
ROW = (
    "INSERT INTO nodes VALUES "
    "('pump-1', 1, 'b', 1.0, 2.0, 'm', '1', NULL, 4321, 7, NULL, NULL, NULL, 3.0{})"
)


def steps(n: int) -> list[Step]:
    return [Step(i, f"step {i}", ()) for i in range(1, n + 1)]


def test_pending_is_what_comes_after_the_current_version() -> None:
    assert [s.version for s in pending(steps(3), 0, "x")] == [1, 2, 3]
    assert [s.version for s in pending(steps(3), 2, "x")] == [3]
    assert pending(steps(3), 3, "x") == []


def test_a_store_newer_than_the_steps_is_refused_with_its_name() -> None:
    with pytest.raises(MigrationError, match=r"db1: store schema version 4 is newer .* \(3\)"):
        pending(steps(3), 4, "db1")


def test_steps_out_of_order_are_a_bug() -> None:
    with pytest.raises(MigrationError, match=r"1\.\.2 in order"):
        pending([Step(2, "b", ()), Step(1, "a", ())], 0, "x")


def versions(path: Path) -> list[tuple[int, str]]:
    with sqlite3.connect(path) as db:
        return db.execute("SELECT version, description FROM schema_version").fetchall()


def test_a_hub_db_of_the_last_release_is_placed_on_the_steps_and_keeps_its_data(
    tmp_path: Path,
) -> None:
    path = tmp_path / "hub.db"
    with sqlite3.connect(path) as db:  # the layout of the release before schema_version
        db.execute(NODES_V1)
        db.execute("ALTER TABLE nodes ADD COLUMN drift TEXT")
        db.execute("CREATE TABLE node_state (node TEXT PRIMARY KEY, data BLOB NOT NULL)")
        db.execute(
            "CREATE TABLE streams (node TEXT NOT NULL, boot TEXT NOT NULL, missing INTEGER "
            "NOT NULL, data BLOB NOT NULL, PRIMARY KEY (node, boot)) WITHOUT ROWID"
        )
        db.execute(ROW.format(", 'ok'"))
        db.execute("PRAGMA user_version=2")
    registry = Registry(path)
    assert registry.schema_version() == len(STEPS)
    assert [(r.node, r.readings, r.drift) for r in registry.nodes()] == [("pump-1", 4321, "ok")]
    registry.close()
    found, *run = versions(path)[:3], versions(path)[3:]
    assert [v for v, _ in versions(path)] == [s.version for s in STEPS]
    assert all(d.endswith("(found)") for _, d in found)  # what the release already had
    assert not any(d.endswith("(found)") for _, d in run[0])  # later steps ran


def test_a_registry_from_before_drift_and_state_gets_both(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    with sqlite3.connect(path) as db:
        db.execute(NODES_V1)
        db.execute(ROW.format(""))
    registry = Registry(path)
    rows = registry.nodes()
    states = registry.load_states()  # seeded from the registry's totals
    registry.close()
    assert [(r.node, r.readings, r.drift) for r in rows] == [("pump-1", 4321, None)]
    assert [(s.node, s.readings) for s in states] == [("pump-1", 4321)]
    assert [(v, d.endswith("(found)")) for v, d in versions(path)] == [
        (1, True),
        *((s.version, False) for s in STEPS[1:]),
    ]


def test_a_hub_db_newer_than_the_hub_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    Registry(path).close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO schema_version VALUES (9, 'future', 0)")
    with pytest.raises(RegistryError, match="schema version 9 is newer"):
        Registry(path)


def test_the_store_url_selects_the_backend(tmp_path: Path) -> None:
    store = open_store("", tmp_path / "hub.db")
    assert store.location == str(tmp_path / "hub.db")
    store.close()
    with pytest.raises(StoreError, match="not a postgresql:// URL"):
        open_store("mysql://x", tmp_path / "hub.db")


def test_a_share_group_shares_every_kind_but_the_retained_status() -> None:
    assert hub_filter(Kind.RESULT, "") == "edgeml/v1/+/result"
    assert hub_filter(Kind.RESULT, "hubs") == "$share/hubs/edgeml/v1/+/result"
    assert hub_filter(Kind.STATUS, "hubs") == "edgeml/v1/+/status"


def test_locks_are_taken_per_node_in_one_order() -> None:
    topics = ["edgeml/v1/b/result", "edgeml/v1/a/event", "edgeml/v1/b/drift", "not/a/topic"]
    assert node_ids(topics) == ["a", "b"]


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"CLOUD_HUB__MQTT__SHARE_GROUP": "hubs"}, "key mqtt.share_group: .*store.url"),
        ({"CLOUD_HUB__MQTT__SHARE_GROUP": "a/b"}, "share_group"),
        ({"CLOUD_HUB__STORE__URL": "sqlite:///x"}, "key store.url: .* not a postgresql"),
    ],
)
def test_sharing_settings_are_checked_at_start(environ: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        load_hub_config(None, environ)


def test_a_group_with_a_shared_store_loads() -> None:
    config = load_hub_config(
        None,
        {
            "CLOUD_HUB__MQTT__SHARE_GROUP": "hubs",
            "CLOUD_HUB__STORE__URL": "postgresql://edgeml@127.0.0.1/edgeml",
        },
    )
    assert (config.mqtt.share_group, config.store.refresh_s) == ("hubs", 5.0)
