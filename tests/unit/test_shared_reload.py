"""A hub on a shared store starts each commit from the store: fleet state and dedupe state of
the nodes it is about to apply are replaced by what is stored, not merged with what it had."""

from __future__ import annotations

from cloud_hub.ingest.coverage import Coverage
from cloud_hub.ingest.dedupe import Deduper
from cloud_hub.ingest.fleet import FleetState, NodeState


def test_fleet_reload_replaces_the_named_nodes_and_forgets_their_changes() -> None:
    fleet = FleetState(60.0)
    fleet.touch("a", "b1", 1.0).readings = 5
    fleet.touch("b", "b1", 1.0).readings = 7
    fleet.reload([NodeState("a", readings=50)], ["a", "c"])
    a, b = fleet.node("a"), fleet.node("b")
    assert a is not None and b is not None
    assert (a.readings, b.readings, fleet.node("c")) == (50, 7, None)
    assert [s.node for s in fleet.take_dirty()] == ["b"]


def test_fleet_reload_of_everything_keeps_only_the_stored_nodes() -> None:
    fleet = FleetState(60.0)
    fleet.touch("gone", "b1", 1.0)
    fleet.reload([NodeState("x", readings=3)])
    assert [s.node for s in fleet.nodes()] == ["x"]


def test_deduper_reload_reads_the_streams_again_from_the_store() -> None:
    stored = {("a", "b1"): Coverage.of([(0, 10)], 0, 100)}
    deduper = Deduper(load=lambda n, b: stored.get((n, b)))
    assert deduper.observe("a", "b1", 3) is False  # loaded: seen before
    assert deduper.observe("a", "b1", 12) is True  # a hole at 10-11 now
    assert deduper.gaps("a") == 2
    # Another hub committed seqs 10-20 meanwhile; the store is what counts.
    stored["a", "b1"] = Coverage.of([(0, 21)], 0, 100)
    deduper.reload({"a": 0}, ["a"])
    assert deduper.take_dirty() == {}
    assert deduper.gaps("a") == 0
    assert deduper.observe("a", "b1", 11) is False
    assert deduper.observe("a", "b1", 21) is True
    assert deduper.gaps("a") == 0


def test_deduper_reload_of_everything_takes_the_stored_gaps() -> None:
    deduper = Deduper()
    deduper.observe("a", "b1", 0)
    deduper.observe("a", "b1", 5)
    deduper.reload({"a": 1, "z": 3})
    assert (deduper.gaps("a"), deduper.gaps("z")) == (1, 3)
