"""The hub's side of shadow runs: reports kept in the registry across restarts, the status
table and JSON, and the CLI's duration and budget arguments."""

from __future__ import annotations

import argparse
import json
import math
import sqlite3
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cloud_hub.cli.shadow import budget, duration, format_status, status_json
from cloud_hub.ingest.fleet import FleetState
from cloud_hub.ingest.registry import Registry
from schemas import behaviour
from schemas.messages import ArmFigures, ModelRef, ShadowReport
from schemas.samples import SAMPLES

NOW = 1_800_000_000.0


def report(node: str, ts: float, **changes: Any) -> ShadowReport:
    sample = SAMPLES["shadow"]
    assert isinstance(sample, ShadowReport)
    return msgspec.structs.replace(sample, node=node, ts=ts, **changes)


def test_the_newest_report_per_node_survives_a_restart(tmp_path: Path) -> None:
    fleet = FleetState(offline_after_s=60.0)
    fleet.apply_shadow(report("pump-1", NOW, state="running"), NOW)
    fleet.apply_shadow(report("pump-2", NOW, state="running"), NOW)
    fleet.apply_shadow(report("pump-1", NOW + 60, state="done"), NOW + 60)
    fleet.apply_shadow(report("pump-1", NOW + 30, state="running"), NOW + 61)  # late, older
    registry = Registry(tmp_path / "hub.db")
    registry.commit(fleet.take_dirty(), {}, NOW + 61, fleet.shadows)
    registry.close()
    restarted = Registry(tmp_path / "hub.db", readonly=True)
    kept = restarted.load_shadows()
    restarted.close()
    assert {n: (r.ts, r.state) for n, r in kept.items()} == {
        "pump-1": (NOW + 60, "done"),
        "pump-2": (NOW, "running"),
    }
    assert kept["pump-1"] == fleet.shadows["pump-1"]


def test_only_nodes_with_a_newer_report_are_written_again(tmp_path: Path) -> None:
    fleet = FleetState(offline_after_s=60.0)
    registry = Registry(tmp_path / "hub.db")
    fleet.apply_shadow(report("pump-1", NOW), NOW)
    registry.commit(fleet.take_dirty(), {}, NOW, fleet.shadows)
    changes_before = registry._db.total_changes
    fleet.touch("pump-1", "boot", NOW + 1)  # the node is dirty, its report is not new
    registry.commit(fleet.take_dirty(), {}, NOW + 1, fleet.shadows)
    writes = registry._db.total_changes - changes_before
    assert writes == 3  # its registry row, snapshot and live part, not its report
    registry.close()


def test_a_registry_from_before_shadow_runs_has_none(tmp_path: Path) -> None:
    Registry(tmp_path / "hub.db").close()
    db = sqlite3.connect(tmp_path / "hub.db")
    db.execute("DROP TABLE shadows")
    db.commit()
    db.close()
    old = Registry(tmp_path / "hub.db", readonly=True)
    assert old.load_shadows() == {}
    old.close()


def arm(version: str, readings: int, flagged: int, counts: list[int]) -> ArmFigures:
    return ArmFigures(
        model=ModelRef("pump", version),
        threshold=2.0,
        readings=readings,
        flagged=flagged,
        unscored=0,
        episodes=flagged // 10,
        score_mean=1.0,
        score_p50=0.9,
        score_p99=1.8,
        score_counts=counts,
        latency_p99_ms=0.25,
    )


def test_status_shows_the_two_arms_side_by_side_with_their_distance() -> None:
    same = [0, 0, 100, 0, 0, 0, 0, 0, 0, 0]
    moved = [0, 0, 50, 50, 0, 0, 0, 0, 0, 0]
    shadow = report(
        "pump-1",
        NOW + 600,
        start=NOW,
        end=NOW + 600,
        state="running",
        reason="",
        active=arm("1", 1000, 10, same),
        candidate=arm("2", 1000, 40, moved),
        agreement=0.97,
        cpu_share=0.031,
    )
    text = format_status(shadow)
    assert "pump-1  shadow" in text and "running" in text and "(10.0 min)" in text
    assert "agreement 0.970" in text and "CPU share 3.10 %" in text
    lines = {line.split()[0] + " " + line.split()[1]: line for line in text.splitlines()[1:]}
    assert lines["flag rate"].split()[2:] == ["1.00", "%", "4.00", "%"]
    assert lines["score p99"].split()[2:] == ["1.8", "1.8"]
    assert behaviour.distance(same, moved) == 0.5
    assert lines["distance 0.500"]
    data = json.loads(json.dumps(status_json(shadow)))
    assert data["distance"] == 0.5
    assert data["candidate"]["flagged"] == 40 and data["node"] == "pump-1"


def test_figures_of_no_readings_show_as_dashes_and_null() -> None:
    empty = ArmFigures(model=ModelRef("pump", "2"), threshold=2.0, readings=0, flagged=0)
    shadow = report(
        "pump-1",
        NOW,
        state="failed",
        reason="opset 99 is not supported",
        active=empty,
        candidate=empty,
        agreement=math.nan,
        cpu_share=0.0,
    )
    text = format_status(shadow)
    assert "failed" in text and "opset 99 is not supported" in text
    assert "agreement -" in text
    data = json.loads(json.dumps(status_json(shadow)))
    assert data["agreement"] is None and data["distance"] is None


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90", 90.0), ("90s", 90.0), ("30m", 1800.0), ("2h", 7200.0), ("1d", 86400.0)],
)
def test_durations(text: str, seconds: float) -> None:
    assert duration(text) == seconds


@pytest.mark.parametrize("text", ["", "30x", "-5m", "0", "8d"])
def test_bad_durations_say_what_is_wrong(text: str) -> None:
    with pytest.raises(argparse.ArgumentTypeError, match=repr(text)):
        duration(text)


def test_cpu_budget_is_a_share_of_a_core() -> None:
    assert budget("0.25") == 0.25
    for bad in ("0", "1.5", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            budget(bad)
