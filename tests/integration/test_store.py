"""The store contract, run against both backends: the SQLite file (embedded default) and a real
PostgreSQL (shared by several hubs); and what only a shared store must do: serialise hubs that
apply messages of the same node."""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import msgspec
import psycopg
import pytest

from cloud_hub.cli.main import main
from cloud_hub.ingest.coverage import BootCoverages, Coverage
from cloud_hub.ingest.fleet import NodeState
from cloud_hub.store.base import HubStore, SharedStore, StoreError, open_store
from cloud_hub.store.postgres import PostgresStore
from schemas.messages import ShadowReport

pytestmark = pytest.mark.integration

NOW = 1_800_000_000.0


def node(name: str, readings: int, boot: str = "b1") -> NodeState:
    state = NodeState(name, online=True, boot=boot, last_seen=NOW, readings=readings)
    state.anomalous = readings // 10
    state.coverage = BootCoverages({boot: Coverage.of([(0, readings)], 0, 100)})
    return state


def stream(*ranges: tuple[int, int]) -> Coverage:
    return Coverage.of(list(ranges), 0, 100)


def test_a_new_store_is_empty(store: HubStore) -> None:
    assert (store.load_states(), store.stream_gaps(), store.nodes()) == ([], {}, [])
    assert store.load_stream("n1", "b1") is None


def test_what_is_committed_is_read_back_by_a_new_process(
    store: HubStore, where: tuple[str, Path]
) -> None:
    store.commit([node("n1", 500), node("n2", 7)], {("n1", "b1"): stream((0, 3), (5, 9))}, NOW)
    store.commit([node("n1", 600)], {("n2", "b1"): stream((0, 1))}, NOW + 1)
    again = open_store(*where)
    try:
        states = {s.node: s for s in again.load_states()}
        assert {n: s.readings for n, s in states.items()} == {"n1": 600, "n2": 7}
        assert states["n1"].anomalous == 60
        assert states["n1"].coverage["b1"].intervals() == [(0, 600)]
        assert again.stream_gaps() == {"n1": 2, "n2": 0}
        seen = again.load_stream("n1", "b1")
        assert seen is not None and seen.intervals() == [(0, 3), (5, 9)]
        rows = again.nodes()
        assert [(r.node, r.readings, r.anomalies, r.updated_at) for r in rows] == [
            ("n1", 600, 60, NOW + 1),
            ("n2", 7, 0, NOW),
        ]
    finally:
        again.close()


def test_the_newest_shadow_report_per_node_is_kept(
    store: HubStore, where: tuple[str, Path]
) -> None:
    from schemas.samples import SAMPLES

    first = SAMPLES["shadow"]
    assert isinstance(first, ShadowReport)
    newer = msgspec.structs.replace(first, ts=first.ts + 60, state="done")
    store.commit([node(first.node, 10)], {}, NOW, {first.node: first})
    store.commit([node(first.node, 20)], {}, NOW + 1, {first.node: newer})
    store.commit([node("n2", 5)], {}, NOW + 2, {first.node: first})  # not among the states
    if where[0]:  # another hub of the group, holding only the older report, writes it late
        late = open_store(*where)
        try:
            late.commit([node(first.node, 20)], {}, NOW + 3, {first.node: first})
        finally:
            late.close()
    again = open_store(*where)
    try:
        assert again.load_shadows() == {first.node: newer}
    finally:
        again.close()


def test_opening_again_runs_no_migration_twice(store: HubStore, where: tuple[str, Path]) -> None:
    version = store.schema_version()
    assert version >= 1
    for _ in range(2):
        again = open_store(*where)
        assert again.schema_version() == version
        again.close()


def test_only_postgresql_is_a_shared_store(store: HubStore, where: tuple[str, Path]) -> None:
    assert isinstance(store, SharedStore) == bool(where[0])


def test_a_store_newer_than_the_hub_is_refused(pg_url: str) -> None:
    PostgresStore(pg_url).close()
    with psycopg.connect(pg_url, autocommit=True) as db:
        db.execute("INSERT INTO schema_version (version, description) VALUES (99, 'future')")
    with pytest.raises(StoreError, match="schema version 99 is newer than this hub knows"):
        PostgresStore(pg_url)


def test_an_unreachable_store_is_named_without_its_password() -> None:
    url = "postgresql://edgeml:s3cret@127.0.0.1:1/edgeml"
    named = re.escape("postgresql://edgeml@127.0.0.1:1/edgeml: cannot connect")
    with pytest.raises(StoreError, match=named) as e:
        PostgresStore(url, connect_timeout_s=2)
    assert "s3cret" not in str(e.value)


def test_a_block_that_fails_writes_nothing(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    try:
        with pytest.raises(RuntimeError), store.locked(["n1"]):
            store.commit([node("n1", 5)], {}, NOW)
            raise RuntimeError("the hub failed half-way")
        assert store.load_states() == []
    finally:
        store.close()


def test_hubs_applying_to_one_node_at_once_apply_one_after_the_other(pg_url: str) -> None:
    """Read-modify-write inside locked() from two connections: no update is lost."""
    rounds, hubs = 50, 3
    stores = [PostgresStore(pg_url) for _ in range(hubs)]

    def hub(store: PostgresStore) -> None:
        for _ in range(rounds):
            with store.locked(["pump", "valve"]) as stored:
                states = {s.node: s for s in stored.states}
                for name in ("pump", "valve"):
                    state = states.get(name) or NodeState(name)
                    state.readings += 1
                    states[name] = state
                store.commit(list(states.values()), {}, NOW)

    threads = [threading.Thread(target=hub, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    try:
        totals = {s.node: s.readings for s in stores[0].load_states()}
    finally:
        for s in stores:
            s.close()
    assert totals == {"pump": rounds * hubs, "valve": rounds * hubs}


def test_serve_names_an_unreachable_store_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    for key, value in {
        "CLOUD_HUB__STORE__URL": "postgresql://edgeml:s3cret@127.0.0.1:1/edgeml",
        "CLOUD_HUB__STORE__DB": str(tmp_path / "hub.db"),
        "CLOUD_HUB__METRICS__PORT": "0",
    }.items():
        monkeypatch.setenv(key, value)
    assert main(["serve"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("cloud-hub serve: postgresql://edgeml@127.0.0.1:1/edgeml: cannot connect")
    assert "s3cret" not in err and "Traceback" not in err


def test_cloud_hub_nodes_reads_the_shared_store(
    pg_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    store = PostgresStore(pg_url)
    store.commit([node("pump-7", 70), node("pump-8", 80)], {}, NOW)
    store.close()
    monkeypatch.setenv("CLOUD_HUB__STORE__URL", pg_url)
    monkeypatch.setenv("CLOUD_HUB__STORE__DB", str(tmp_path / "absent" / "hub.db"))
    assert main(["nodes", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(n["node"], n["readings"]) for n in listed] == [("pump-7", 70), ("pump-8", 80)]


def test_a_dropped_connection_fails_one_call_and_the_next_connects_again(pg_url: str) -> None:
    store = PostgresStore(pg_url)
    try:
        store.commit([node("n1", 5)], {}, NOW)
        with psycopg.connect(pg_url, autocommit=True) as db:
            db.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE pid <> pg_backend_pid() AND datname = current_database()"
            )
        with (
            pytest.raises(StoreError, match="cannot apply messages of 1 nodes"),
            store.locked(["n1"]),
        ):
            pass
        with store.locked(["n1"]) as stored:
            assert [s.readings for s in stored.states] == [5]
    finally:
        store.close()
