"""The SQLite fleet registry and the ``cloud-hub nodes`` table read from it."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from cloud_hub.cli.main import ago, format_nodes, main, nodes_header, nodes_json
from cloud_hub.ingest.dedupe import Deduper
from cloud_hub.ingest.fleet import FleetState, NodeState
from cloud_hub.ingest.inbound import Ingest
from cloud_hub.ingest.registry import NodeRow, Registry, RegistryError
from schemas.messages import Drift, Status, Telemetry
from schemas.samples import SAMPLES
from tests.unit.test_ingest import result, send

NOW = 1_800_000_000.0


def sample(kind: str, **changes: Any) -> Any:
    return msgspec.structs.replace(SAMPLES[kind], **changes)


def fleet_of(*nodes: str) -> FleetState:
    fleet = FleetState(offline_after_s=60.0)
    for node in nodes:
        status: Status = sample("status", node=node)
        fleet.apply_status(status, NOW)
        telemetry: Telemetry = sample("telemetry", node=node)
        fleet.apply_telemetry(telemetry, NOW + 1)
        drift: Drift = sample("drift", node=node)
        fleet.apply_drift(drift, NOW + 2)
    return fleet


def only(fleet: FleetState, node: str) -> NodeState:
    state = fleet.node(node)
    assert state is not None
    return state


def test_round_trip(tmp_path: Path) -> None:
    fleet = fleet_of("pump-01", "pump-02")
    only(fleet, "pump-01").readings = 1234
    only(fleet, "pump-01").anomalous = 56
    registry = Registry(tmp_path / "sub" / "hub.db")
    assert registry.upsert_many(fleet.take_dirty(), NOW + 3) == 2
    rows = {r.node: r for r in registry.nodes()}
    registry.close()
    row = rows["pump-01"]
    status, telemetry, drift = SAMPLES["status"], SAMPLES["telemetry"], SAMPLES["drift"]
    assert isinstance(status, Status) and isinstance(telemetry, Telemetry)
    assert isinstance(drift, Drift)
    assert row == NodeRow(
        node="pump-01",
        online=True,
        boot=status.boot,
        started_at=status.started_at,
        last_seen=NOW + 2,
        active_model="pump-pca",
        active_version="3",
        capabilities=msgspec.to_builtins(status.capabilities),
        readings=1234,
        anomalies=56,
        latency_p99_ms=telemetry.latency_ms.p99,
        outbox_depth=telemetry.outbox_depth,
        drift_psi_max=max(c.psi for c in drift.channels),
        updated_at=NOW + 3,
        drift="ok",  # the sample report's detectors are far from their thresholds
    )
    assert rows["pump-02"].node == "pump-02"


def test_upsert_replaces_the_row(tmp_path: Path) -> None:
    fleet = fleet_of("pump-01")
    registry = Registry(tmp_path / "hub.db")
    registry.upsert_many([only(fleet, "pump-01")], NOW)
    fleet.apply_telemetry(sample("telemetry", seq=50, outbox_depth=9), NOW + 10)
    fleet.apply_status(sample("status", state="offline", ts=NOW + 5), NOW + 20)
    registry.upsert_many([only(fleet, "pump-01")], NOW + 21)
    [row] = registry.nodes()
    registry.close()
    assert (row.online, row.outbox_depth, row.updated_at) == (False, 9, NOW + 21)
    assert row.last_seen == NOW + 10, "a will is sent by the broker, not the node"


def test_a_node_without_status_or_telemetry_has_empty_fields(tmp_path: Path) -> None:
    fleet = FleetState(60.0)
    fleet.touch("pump-09", "b1", NOW)
    registry = Registry(tmp_path / "hub.db")
    registry.upsert_many(fleet.take_dirty(), NOW)
    [row] = registry.nodes()
    registry.close()
    assert row.online is None
    assert row.capabilities is None
    assert (row.latency_p99_ms, row.outbox_depth, row.drift_psi_max) == (None, None, None)


def test_reader_in_another_connection_sees_commits_while_a_writer_holds_the_lock(
    tmp_path: Path,
) -> None:
    path = tmp_path / "hub.db"
    writer = Registry(path)
    writer.upsert_many(fleet_of("pump-01", "pump-02").take_dirty(), NOW)
    reader = Registry(path, readonly=True)
    holder = sqlite3.connect(path, timeout=0.1)
    try:
        holder.execute("BEGIN IMMEDIATE")
        holder.execute("UPDATE nodes SET readings = 999")
        # WAL: the reader sees the last commit and does not wait for the open write.
        assert [r.readings for r in reader.nodes()] == [0, 0]
        holder.commit()
        assert [r.readings for r in reader.nodes()] == [999, 999]
        writer.upsert_many(fleet_of("pump-03").take_dirty(), NOW)
        assert [r.node for r in reader.nodes()] == ["pump-01", "pump-02", "pump-03"]
    finally:
        holder.close()
        reader.close()
        writer.close()


def test_readonly_registry_is_read_only(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    Registry(path).close()
    reader = Registry(path, readonly=True)
    with pytest.raises(RegistryError, match=r"hub\.db: cannot write 1 nodes: .*readonly"):
        reader.upsert_many(fleet_of("pump-01").take_dirty(), NOW)
    reader.close()


def test_missing_registry_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.db"
    with pytest.raises(RegistryError, match=r"nope\.db"):
        Registry(path, readonly=True)
    assert not path.exists()


def test_nodes_table_shows_state_age_model_and_numbers() -> None:
    def row(node: str, online: bool | None, seen: float | None, **kw: Any) -> NodeRow:
        fields: dict[str, Any] = {
            "boot": "b",
            "started_at": None,
            "active_model": None,
            "active_version": None,
            "capabilities": None,
            "readings": 0,
            "anomalies": 0,
            "latency_p99_ms": None,
            "outbox_depth": None,
            "drift_psi_max": None,
            "updated_at": NOW,
        }
        return NodeRow(node=node, online=online, last_seen=seen, **(fields | kw))

    rows = [
        row(
            "pump-01",
            True,
            NOW - 5,
            active_model="pump-pca",
            active_version="3",
            readings=1200,
            anomalies=7,
            latency_p99_ms=0.125,
            outbox_depth=4,
            drift_psi_max=0.31,
            drift="drifting: pressure",
        ),
        row("pump-02", True, NOW - 3600 * 3),
        row("pump-03", False, NOW - 1),
        row("pump-04", None, None),
    ]
    lines = format_nodes(rows, NOW, offline_after_s=60.0).splitlines()
    assert lines[0].split()[:2] == ["NODE", "STATE"]
    assert lines[1].split() == [
        "pump-01", "online", "5s", "ago", "pump-pca@3", "1200", "7", "0.12", "4", "drifting:",
        "pressure",
    ]  # fmt: skip
    assert lines[2].split()[:4] == ["pump-02", "offline", "3h", "ago"]
    assert lines[3].split()[:2] == ["pump-03", "offline"]
    assert lines[4].split()[:3] == ["pump-04", "offline", "never"]
    assert "(no nodes yet)" in format_nodes([], NOW, 60.0)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s ago"), (59.9, "59s ago"), (60, "1m ago"), (7200, "2h ago"), (86400 * 3, "3d ago")],
)
def test_ago(seconds: float, text: str) -> None:
    assert ago(seconds) == text


def test_nodes_command_reads_the_registry(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "hub.db"
    writer = Registry(path)
    writer.upsert_many(fleet_of("pump-01").take_dirty(), NOW)
    assert main(["nodes", "--db", str(path)]) == 0
    writer.close()
    out = capsys.readouterr().out
    assert "pump-01" in out and "pump-pca@3" in out


def test_nodes_command_without_registry_fails_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["nodes", "--db", str(tmp_path / "none.db")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "none.db" in err


def _seen(node: str, online: bool, seen: float, updated: float) -> NodeRow:
    return NodeRow(
        node=node,
        online=online,
        boot="b",
        started_at=None,
        last_seen=seen,
        active_model=None,
        active_version=None,
        capabilities=None,
        readings=0,
        anomalies=0,
        latency_p99_ms=None,
        outbox_depth=None,
        drift_psi_max=None,
        updated_at=updated,
    )


def test_a_silent_hub_makes_online_nodes_unknown_not_fresh() -> None:
    rows = [_seen("pump-01", True, NOW - 50, NOW - 50), _seen("pump-02", False, NOW - 50, NOW - 50)]
    # The hub wrote 50 s ago; with stale_after 30 s its word on pump-01 is no longer news.
    lines = format_nodes(rows, NOW, offline_after_s=120.0, stale_after_s=30.0).splitlines()
    assert lines[1].split()[:2] == ["pump-01", "unknown"]
    assert lines[2].split()[:2] == ["pump-02", "offline"]
    assert "is cloud-hub serve running?" in nodes_header(rows, NOW, 30.0)
    assert [n["state"] for n in json.loads(nodes_json(rows, NOW, 120.0, 30.0))] == [
        "unknown",
        "offline",
    ]
    # A hub that wrote recently: states as the hub said, and the header says when it wrote.
    lines = format_nodes(rows, NOW, offline_after_s=120.0, stale_after_s=60.0).splitlines()
    assert lines[1].split()[:2] == ["pump-01", "online"]
    header = nodes_header(rows, NOW, 60.0)
    assert header.endswith("hub last wrote 50s ago")
    assert header.startswith(time.strftime("%Y-%m-%d %H:%M", time.localtime(NOW)))


def test_committed_ingest_state_is_what_a_restarted_hub_starts_from(tmp_path: Path) -> None:

    flags = np.array([True, False, False, True])
    registry = Registry(tmp_path / "hub.db")
    ingest = Ingest(fleet_of("n1"), Deduper())
    for seq in (0, 1, 2, 5):  # 3 and 4 missing
        send(ingest, result("n1", seq, flags, first=4 * seq))
    registry.commit(ingest.fleet.take_dirty(), ingest.deduper.take_dirty(), NOW)
    registry.close()

    again = Registry(tmp_path / "hub.db")
    fleet = FleetState(offline_after_s=60.0)
    fleet.restore(again.load_states())
    deduper = Deduper(load=again.load_stream)
    deduper.restore(again.stream_gaps())
    restarted = Ingest(fleet, deduper)
    before, after = only(ingest.fleet, "n1"), only(fleet, "n1")
    assert (after.readings, after.anomalous) == (before.readings, before.anomalous) == (16, 8)
    assert after.telemetry == before.telemetry and after.drift == before.drift
    assert deduper.gaps("n1") == 2 and fleet.missing_readings("n1") == 8
    # A replay after the restart is a duplicate; the missing seq is new and fills the gap.
    assert send(restarted, result("n1", 1, flags, first=4)).status == "duplicate"
    assert send(restarted, result("n1", 3, flags, first=12)).status == "applied"
    assert after.readings == 20 and deduper.gaps("n1") == 1
    assert [r.readings for r in again.nodes()] == [16]  # the registry row came with the commit


def test_a_registry_from_before_durable_state_seeds_the_totals(tmp_path: Path) -> None:
    old = sqlite3.connect(tmp_path / "hub.db")
    old.execute(
        "CREATE TABLE nodes (node TEXT PRIMARY KEY, online INTEGER, boot TEXT NOT NULL, "
        "started_at REAL, last_seen REAL, active_model TEXT, active_version TEXT, "
        "capabilities TEXT, readings INTEGER NOT NULL, anomalies INTEGER NOT NULL, "
        "latency_p99_ms REAL, outbox_depth INTEGER, drift_psi_max REAL, updated_at REAL NOT NULL)"
    )
    old.execute(
        "INSERT INTO nodes VALUES ('n1', 1, 'b', 1.0, 2.0, 'm', '3', NULL, 9148, 12, "
        "NULL, NULL, NULL, 3.0)"
    )
    old.commit()
    old.close()
    (state,) = Registry(tmp_path / "hub.db").load_states()
    assert (state.node, state.readings, state.anomalous) == ("n1", 9148, 12)
    assert state.model is not None and state.model.version == "3"
