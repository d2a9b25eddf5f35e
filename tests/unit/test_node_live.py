"""A node's snapshot in two parts (SQLite): what a result batch changes is written alone, what
a status or report changes is written whole, and a restarted hub reads back exactly the
state it had; a store from before the split is read whole and upgraded in place."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import msgspec
import numpy as np

from cloud_hub.ingest.dedupe import Deduper
from cloud_hub.ingest.fleet import FleetState, NodeState
from cloud_hub.ingest.inbound import Ingest
from cloud_hub.ingest.registry import STEPS, Registry
from cloud_hub.ingest.snapshot import dump_node
from cloud_hub.store.rows import row_of, row_params, row_values
from schemas.messages import ModelRef
from tests.unit.test_ingest import msg, result, send

NOW = 1_800_000_000.0
FLAGS = np.array([True, False, False, False])


def commit(ingest: Ingest, registry: Registry, now: float = NOW) -> set[str]:
    """Commit as the hub does; return the nodes written whole (and ``<node>:health`` for
    those whose telemetry was written alone)."""
    profiles, healths = ingest.take_profiles(), ingest.take_healths()
    states, streams = ingest.fleet.take_dirty(), ingest.deduper.take_dirty()
    registry.commit(states, streams, now, ingest.fleet.shadows, profiles=profiles, healths=healths)
    return profiles | {f"{node}:health" for node in healths - profiles}


def restarted(path: Path) -> dict[str, NodeState]:
    registry = Registry(path)
    try:
        return {s.node: s for s in registry.load_states()}
    finally:
        registry.close()


def same(a: NodeState, b: NodeState) -> bool:
    """Equal as stored: every field, the coverage of every boot in its order."""
    return dump_node(a) == dump_node(b)


def test_only_status_drift_new_nodes_models_and_other_boots_write_a_node_whole(
    tmp_path: Path,
) -> None:
    ingest = Ingest(FleetState(offline_after_s=60.0), Deduper())
    registry = Registry(tmp_path / "hub.db")
    send(ingest, msg("status", "n1", seq=0))
    send(ingest, result("n2", 0, FLAGS))  # a node first heard from by a result
    send(ingest, msg("telemetry", "n3", seq=0))  # ... or by telemetry
    assert commit(ingest, registry) == {"n1", "n2", "n3"}
    send(ingest, result("n1", 1, FLAGS))
    assert commit(ingest, registry) == {"n1"}  # its first boot with readings
    for seq in (2, 3):
        send(ingest, result("n1", seq, FLAGS, first=4 * seq))
    send(ingest, msg("event", "n1", seq=4))
    send(ingest, result("n2", 1, FLAGS, first=4))
    assert commit(ingest, registry) == set()  # counters, last seen, the newest coverage
    send(ingest, msg("telemetry", "n1", seq=5))
    send(ingest, msg("drift", "n2", seq=2))
    assert commit(ingest, registry) == {"n1:health", "n2"}
    model = ModelRef("pump-pca", "8")
    send(ingest, msg("telemetry", "n3", seq=1, ts=NOW + 1, model=model))  # another model
    assert commit(ingest, registry) == {"n3"}
    send(ingest, result("n1", 0, FLAGS, boot="b2"))  # a new boot
    assert commit(ingest, registry) == {"n1"}
    send(ingest, result("n1", 6, FLAGS, first=40))  # a late batch of the older boot
    assert commit(ingest, registry) == {"n1"}
    batch = msgspec.structs.replace(result("n2", 2, FLAGS, first=8), model=ModelRef("m", "9"))
    send(ingest, batch)  # another model
    assert commit(ingest, registry) == {"n2"}
    registry.close()
    stored = restarted(tmp_path / "hub.db")
    for node in ("n1", "n2", "n3"):
        state = ingest.fleet.node(node)
        assert state is not None and same(stored[node], state)


def test_a_restarted_hub_reads_back_the_state_it_had(tmp_path: Path) -> None:
    ingest = Ingest(FleetState(offline_after_s=60.0), Deduper())
    registry = Registry(tmp_path / "hub.db")
    rng = np.random.default_rng(3)
    kinds = ["result"] * 12 + ["event", "telemetry", "drift", "ack", "status", "boot", "late"]
    nodes = [f"n{i}" for i in range(5)]
    boots = {node: ["b0"] for node in nodes}
    seq = {(node, "b0"): 1 for node in nodes}
    first = {(node, "b0"): 0 for node in nodes}
    for node in nodes:
        send(ingest, msg("status", node, seq=0, boot="b0"))
    for step in range(500):
        node = nodes[int(rng.integers(len(nodes)))]
        kind = str(kinds[rng.integers(len(kinds))])
        now = NOW + step
        if kind == "boot":  # a reboot: a new stream, a new newest coverage
            boots[node].append(f"b{len(boots[node])}")
            seq[node, boots[node][-1]] = first[node, boots[node][-1]] = 0
            kind = "result"
        boot = boots[node][-2 if kind == "late" and len(boots[node]) > 1 else -1]
        key = (node, boot)
        if kind in ("result", "late"):
            send(ingest, result(node, seq[key], FLAGS, first=first[key], boot=boot), now)
            first[key] += 4 + int(rng.integers(2)) * 4  # now and then readings go missing
        else:
            send(ingest, msg(kind, node, seq=seq[key], ts=now, boot=boot), now)
        seq[key] += 1
        if step % 7 == 6:
            commit(ingest, registry, now)
    commit(ingest, registry, NOW + 500)
    rows = {r.node: r for r in registry.nodes()}
    registry.close()
    stored = restarted(tmp_path / "hub.db")
    assert set(stored) == set(nodes)
    assert sum(len(s.coverage) > 1 for s in stored.values()) >= 3  # reboots were among it
    for node, state in stored.items():
        held = ingest.fleet.node(node)
        assert held is not None and same(state, held)
        assert (rows[node].readings, rows[node].last_seen) == (held.readings, held.last_seen)
        assert rows[node].updated_at > NOW  # the live part's, newer than the row's


def old_store(path: Path, states: list[NodeState]) -> None:
    """A hub.db as the hub before node_live wrote it: steps 1-4, whole snapshots."""
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE schema_version (version INTEGER PRIMARY KEY, "
            "description TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        for step in STEPS[:4]:
            for statement in step.statements:
                db.execute(statement)
            db.execute("INSERT INTO schema_version VALUES (?, ?, 0)", (step.version, "old"))
        for state in states:
            db.execute(
                f"INSERT INTO nodes VALUES ({', '.join('?' * 15)})", row_params(row_of(state, NOW))
            )
            db.execute("INSERT INTO node_state VALUES (?, ?)", (state.node, dump_node(state)))


def test_a_store_from_before_the_split_is_read_whole_and_upgraded(tmp_path: Path) -> None:
    ingest = Ingest(FleetState(offline_after_s=60.0), Deduper())
    for node in ("n1", "n2"):
        send(ingest, msg("status", node, seq=0))
        send(ingest, msg("telemetry", node, seq=1))
        send(ingest, result(node, 2, FLAGS))
    path = tmp_path / "hub.db"
    old_store(path, list(ingest.fleet.nodes()))
    reader = Registry(path, readonly=True)  # cloud-hub nodes, before serve migrated it
    assert [(s.node, s.readings) for s in reader.load_states()] == [("n1", 4), ("n2", 4)]
    assert [(r.node, r.readings) for r in reader.nodes()] == [("n1", 4), ("n2", 4)]
    reader.close()
    registry = Registry(path)
    assert registry.schema_version() == len(STEPS)
    fleet = FleetState(offline_after_s=60.0)
    fleet.restore(registry.load_states())
    for state in fleet.nodes():
        held = ingest.fleet.node(state.node)
        assert held is not None and same(state, held)
    again = Ingest(fleet, Deduper(load=registry.load_stream))
    send(again, result("n1", 3, FLAGS, first=4), NOW + 5)
    assert commit(again, registry, NOW + 5) == set()  # only n1's live part
    registry.close()
    stored = restarted(path)
    assert (stored["n1"].readings, stored["n2"].readings) == (8, 4)
    assert stored["n1"].coverage["b1"].intervals() == [(0, 8)]
    assert stored["n1"].telemetry == ingest.fleet.node("n1").telemetry  # type: ignore[union-attr]


def test_a_registry_seeded_from_rows_writes_every_node_whole(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    with sqlite3.connect(path) as db:  # the registry of a hub from before node_state
        db.execute(STEPS[0].statements[0])
        db.execute(
            "INSERT INTO nodes VALUES ('n1', 1, 'b1', 1.0, 2.0, 'm', '3', NULL, 40, 2, "
            "NULL, NULL, NULL, 3.0)"
        )
    registry = Registry(path)
    fleet = FleetState(offline_after_s=60.0)
    fleet.restore(registry.load_states())
    ingest = Ingest(fleet, Deduper())
    send(ingest, result("n1", 0, FLAGS), NOW)
    commit(ingest, registry)
    registry.close()
    assert restarted(path)["n1"].readings == 44


def test_a_registry_row_is_made_directly_as_row_of_makes_it() -> None:
    ingest = Ingest(FleetState(offline_after_s=60.0), Deduper())
    for i, kind in enumerate(("status", "telemetry", "drift")):
        send(ingest, msg(kind, "n1", seq=i))
    send(ingest, result("n2", 0, FLAGS))  # no status: no capabilities, model of the batch
    for state in ingest.fleet.nodes():
        assert row_values(state, NOW) == row_params(row_of(state, NOW))
    assert row_values(NodeState("n3"), NOW) == row_params(row_of(NodeState("n3"), NOW))
