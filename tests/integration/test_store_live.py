"""A node's snapshot in two parts, on both backends: a commit of the live part alone is read
back with the rest by a new process (and by a hub of a group, inside ``locked``); a store
written before the split is read whole, then migrated and written in two parts."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import psycopg
import pytest

from cloud_hub.ingest.coverage import BootCoverages, Coverage
from cloud_hub.ingest.fleet import NodeState, TelemetrySummary
from cloud_hub.ingest.snapshot import dump_node
from cloud_hub.store.base import HubStore, SharedStore, open_store
from schemas.messages import ModelRef

pytestmark = pytest.mark.integration

NOW = 1_800_000_000.0


def node(name: str) -> NodeState:
    state = NodeState(name, online=True, boot="b2", last_seen=NOW, readings=500, anomalous=5)
    state.model = ModelRef("pump-pca", "3")
    state.coverage = BootCoverages(
        {"b1": Coverage.of([(0, 100)], 0, 100), "b2": Coverage.of([(0, 400)], 0, 100)}
    )
    return state


def later(state: NodeState) -> None:
    """What result batches and an event change of a node: its live part only."""
    state.readings += 256
    state.anomalous += 3
    state.events_opened += 1
    state.last_seen = NOW + 9
    state.threshold = 4.5
    state.coverage["b2"].add(500, 756)


def telemetry(state: NodeState, p99: float) -> None:
    """What a telemetry report changes of a node: its health part only."""
    state.telemetry = TelemetrySummary(
        ts=NOW + p99, boot=state.boot, latency_p50_ms=1.0, latency_p95_ms=2.0,
        latency_p99_ms=p99, rss_bytes=50_000_000, cpu_percent=3.0, power_w=2.9, outbox_depth=7,
        outbox_bytes=700, dropped=2, rollbacks=0, errors=1,
    )  # fmt: skip
    state.dropped_seen += 2
    state.errors_seen += 1


def read_back(where: tuple[str, Path]) -> tuple[dict[str, NodeState], dict[str, int]]:
    """(states, readings of the registry rows) as a new process reads them."""
    again = open_store(*where)
    try:
        states = {s.node: s for s in again.load_states()}
        return states, {r.node: r.readings for r in again.nodes()}
    finally:
        again.close()


def test_a_commit_of_live_parts_is_read_back_with_the_rest(
    store: HubStore, where: tuple[str, Path]
) -> None:
    states = [node("n1"), node("n2")]
    store.commit(states, {}, NOW)  # whole
    later(states[0])
    store.commit(states[:1], {}, NOW + 10, profiles=set())  # n1's live part only
    stored, readings = read_back(where)
    assert dump_node(stored["n1"]) == dump_node(states[0])
    assert dump_node(stored["n2"]) == dump_node(states[1])
    assert list(stored["n1"].coverage) == ["b1", "b2"]  # the newest boot stays the last
    assert readings == {"n1": 756, "n2": 500}
    assert [r.updated_at for r in store.nodes()] == [NOW + 10, NOW]
    if isinstance(store, SharedStore):  # a hub of a group reads it inside its transaction
        with store.locked(["n1"]) as held:
            assert [dump_node(s) for s in held.states] == [dump_node(states[0])]


def test_a_commit_of_telemetry_is_read_back_with_the_rest(
    store: HubStore, where: tuple[str, Path]
) -> None:
    states = [node("n1"), node("n2")]
    telemetry(states[0], 8.0)
    store.commit(states, {}, NOW)  # whole, with n1's first telemetry
    telemetry(states[0], 9.5)
    telemetry(states[1], 12.0)
    store.commit(states, {}, NOW + 10, profiles=set(), healths={"n1", "n2"})
    stored, _ = read_back(where)
    assert {n: dump_node(s) for n, s in stored.items()} == {s.node: dump_node(s) for s in states}
    assert [(r.latency_p99_ms, r.outbox_depth) for r in store.nodes()] == [(9.5, 7), (12.0, 7)]


def make_old(where: tuple[str, Path]) -> None:
    """Turn the store at ``where`` into one of the hub before node_live: no such table, and
    the step that made it not recorded (its snapshots and rows were written whole)."""
    url, path = where
    forget = "DELETE FROM schema_version WHERE version = (SELECT MAX(version) FROM schema_version)"
    if url:
        with psycopg.connect(url, autocommit=True) as pg:
            pg.execute("DROP TABLE node_live")
            pg.execute(forget)
    else:
        with sqlite3.connect(path) as db:
            db.execute("DROP TABLE node_live")
            db.execute(forget)


def test_a_store_from_before_the_split_is_read_and_upgraded(
    store: HubStore, where: tuple[str, Path]
) -> None:
    states = [node("n1"), node("n2")]
    store.commit(states, {}, NOW)
    version = store.schema_version()
    store.close()
    make_old(where)
    stored, readings = read_back(where)  # migrates: node_live is back, empty
    assert {n: dump_node(s) for n, s in stored.items()} == {s.node: dump_node(s) for s in states}
    assert readings == {"n1": 500, "n2": 500}
    newer = open_store(*where)
    try:
        assert newer.schema_version() == version
        later(states[1])
        newer.commit(states[1:], {}, NOW + 10, profiles=set())
    finally:
        newer.close()
    stored, readings = read_back(where)
    assert dump_node(stored["n2"]) == dump_node(states[1])
    assert readings == {"n1": 500, "n2": 756}
