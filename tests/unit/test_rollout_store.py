"""The rollout store: rollouts, nodes and decisions survive a reopen; requests are taken once."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from cloud_hub.rollouts.state import Decision, Rollout
from cloud_hub.rollouts.store import SCHEMA_VERSION, RolloutStore, RolloutStoreError


def test_a_rollout_comes_back_as_it_was_saved(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path / "rollouts.db")
    rollout = Rollout.new(
        "r1", "pump", "2", [["a"], ["b", "c"]], now=5.0, created_by="me", bake_s=60
    )
    store.create(rollout)
    rollout.state, rollout.phase, rollout.wave = "stopped", "finished", 1
    run = rollout.nodes["b"]
    run.step, run.previous, run.command, run.switched_at = "rolled_back", "pump@1", "c1", 9.0
    run.before = {"readings": 10, "flagged": 1}
    rollout.touch(run)
    decision = Decision(
        10.0, 1, "gate", False, "FAIL: flag_rate", {"figures": {"after": {"readings": 3}}}
    )
    store.save(rollout, [decision])
    store.close()

    again = RolloutStore(tmp_path / "rollouts.db")
    loaded = again.load("r1")
    assert loaded is not None
    assert (loaded.state, loaded.phase, loaded.wave, loaded.waves) == (
        "stopped",
        "finished",
        1,
        [["a"], ["b", "c"]],
    )
    assert loaded.nodes["b"] == run
    assert loaded.nodes["a"].step == "waiting"
    assert loaded.decisions == [decision]
    assert again.counts() == {"stopped": 1}
    assert again.active_ids() == []
    again.close()


def test_an_id_is_taken_once(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path / "rollouts.db")
    store.create(Rollout.new("r1", "pump", "2", [["a"]], now=0.0, created_by="me", bake_s=1))
    with pytest.raises(RolloutStoreError, match="exists already"):
        store.create(Rollout.new("r1", "pump", "3", [["a"]], now=0.0, created_by="me", bake_s=1))


def test_requests_are_taken_once_in_order(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path / "rollouts.db")
    store.request("r1", "pause", 1.0, "me")
    store.request("r1", "abort", 2.0, "me")
    assert [r.action for r in store.take_requests()] == ["pause", "abort"]
    assert store.take_requests() == []


def test_a_file_from_a_newer_hub_is_refused_with_its_version(tmp_path: Path) -> None:
    path = tmp_path / "rollouts.db"
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(RolloutStoreError, match=f"schema version {SCHEMA_VERSION + 1} is newer"):
        RolloutStore(path)


def test_an_unwritable_place_is_named(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(RolloutStoreError, match="cannot open the rollout store"):
        RolloutStore(blocker / "rollouts.db")
