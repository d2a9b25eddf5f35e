"""The hub's episode store, its open-episode metric and ``cloud-hub events``."""

from __future__ import annotations

import json
from pathlib import Path

import msgspec
import pytest

from cloud_hub.cli.events import format_events, parse_since
from cloud_hub.cli.main import main
from cloud_hub.ingest.events_store import EpisodeSink, EventStore, OpenEpisodes
from schemas.messages import ChannelShare, Event, ModelRef
from tests.unit.test_fleet_metrics import hub, send, value

T0 = 1_800_000_000.0


def event(node: str, episode: int, state: str, **changes: object) -> Event:
    base = Event(
        node=node,
        boot="b1",
        seq=episode * 2 + (state == "close"),
        ts=T0,
        model=ModelRef("pump-pca", "1"),
        episode=episode,
        state="open",
        started=T0 + 10 * episode,
        severity="warning",
        peak_score=3.0,
        threshold=1.5,
        readings=3,
        channels=[ChannelShare("pressure", 0.8), ChannelShare("current", 0.2)],
    )
    ended = {"ended": T0 + 10 * episode + 5} if state == "close" else {}
    return msgspec.structs.replace(base, state=state, **ended, **changes)


def test_an_episode_is_one_row_from_open_to_close(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db")
    store.record(event("pump-3", 1, "open"), T0)
    (row,) = store.query(open_only=True)
    assert (row.node, row.kind, row.ended, row.channels[0].channel) == (
        "pump-3",
        "machine",
        None,
        "pressure",
    )
    store.record(event("pump-3", 1, "close", severity="critical", peak_score=4.5, readings=9), T0)
    assert store.query(open_only=True) == []
    (row,) = store.query()
    assert (row.ended, row.severity, row.peak_score, row.readings) == (T0 + 15, "critical", 4.5, 9)
    # a late open (redelivered out of order) does not reopen it
    store.record(event("pump-3", 1, "open"), T0)
    assert store.query()[0].ended == T0 + 15


def test_queries_by_node_time_and_kind(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db")
    store.record(event("pump-1", 1, "close"), T0)
    store.record(event("pump-3", 2, "open"), T0)
    sensor = event("pump-3", 1, "open", kind="sensor", channel="thermocouple", fault="stuck")
    store.record(sensor, T0)
    assert [r.episode for r in store.query(node="pump-3")] == [2, 1]
    assert {r.node for r in store.query(since=T0 + 18)} == {"pump-3"}
    kinds = {(r.kind, r.channel, r.fault) for r in store.query(node="pump-3", open_only=True)}
    assert kinds == {("machine", "", ""), ("sensor", "thermocouple", "stuck")}


def test_retention_is_bounded_by_age_and_rows(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db", retention_s=100.0, max_rows=3)
    for i in range(1, 6):
        store.record(event("pump-1", i, "close"), T0)
    assert store.prune(T0 + 20) == 2  # five rows, three kept: the newest
    assert [r.episode for r in store.query()] == [5, 4, 3]
    assert store.prune(T0 + 150) == 2  # ended at T0 + 35 and + 45: over 100 s before
    assert [r.episode for r in store.query()] == [5]


def test_open_episodes_metric_per_node_and_kind() -> None:
    ingest, registry, _ = hub()
    send(ingest, event("pump-3", 1, "open"))
    send(
        ingest, event("pump-3", 1, "open", kind="sensor", channel="pressure", fault="spike", seq=7)
    )
    send(ingest, event("pump-1", 1, "open"))
    send(ingest, event("pump-1", 1, "close"))
    assert value(registry, "edgeml_open_episodes", node="pump-3", kind="machine") == 1
    assert value(registry, "edgeml_open_episodes", node="pump-3", kind="sensor") == 1
    assert value(registry, "edgeml_open_episodes", node="pump-1", kind="machine") == 0
    # a new boot forgets the episodes its crashed predecessor never closed
    send(ingest, event("pump-3", 5, "close", boot="b2", seq=1))
    assert value(registry, "edgeml_open_episodes", node="pump-3", kind="machine") == 0


def test_a_failing_store_is_counted_and_ingest_goes_on(tmp_path: Path) -> None:
    store = EventStore(tmp_path / "events.db")
    sink = EpisodeSink(store)
    store.close()
    sink.on_event(event("pump-1", 1, "open"), T0)
    assert sink.errors == 1 and sink.open.counts()["pump-1", "machine"] == 1


def test_cloud_hub_events_table_and_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "events.db"
    store = EventStore(db)
    store.record(event("pump-3", 1, "close"), T0)
    store.record(
        event("pump-3", 1, "open", kind="sensor", channel="thermocouple", fault="stuck"), T0
    )
    store.close()
    assert main(["events", "--db", str(db), "--node", "pump-3"]) == 0
    table = capsys.readouterr().out
    assert "thermocouple (stuck)" in table and "pressure 80%, current 20%" in table
    assert "3 (x2.0)" in table and "open" in table
    assert main(["events", "--db", str(db), "--open", "--json"]) == 0
    (line,) = capsys.readouterr().out.splitlines()
    assert json.loads(line)["fault"] == "stuck"
    assert main(["events", "--db", str(tmp_path / "none.db")]) != 0
    assert "has cloud-hub serve run yet" in capsys.readouterr().err
    assert main(["events", "--db", str(db), "--since", "yesterday"]) != 0
    assert "--since 'yesterday'" in capsys.readouterr().err
    assert format_events([]).endswith("(no episodes)")


def test_since_takes_durations_unix_and_iso_times() -> None:
    assert parse_since("2h", 10_000.0) == 10_000.0 - 7_200
    assert parse_since("1700000000", 0.0) == 1_700_000_000.0
    assert parse_since("2026-11-30T21:00:00", 0.0) == parse_since("2026-11-30T21:00:00+00:00", 0.0)


def test_open_episodes_count_each_episode_once_per_kind() -> None:
    episodes = OpenEpisodes()
    episodes.apply(event("pump-1", 1, "open"))
    episodes.apply(event("pump-1", 1, "open"))  # a redelivered open
    episodes.apply(event("pump-1", 2, "open"))
    episodes.apply(event("pump-1", 3, "open", kind="sensor", channel="pressure", fault="spike"))
    episodes.apply(event("pump-2", 1, "open"))
    episodes.apply(event("pump-2", 1, "close"))
    assert episodes.open_now() == {("pump-1", "machine"): 2, ("pump-1", "sensor"): 1}
    assert episodes.counts()["pump-2", "machine"] == 0
    episodes.apply(event("pump-1", 2, "close"))
    episodes.apply(event("pump-1", 1, "open", boot="b2"))  # a new boot: the old ones are gone
    assert episodes.open_now() == {("pump-1", "machine"): 1}
