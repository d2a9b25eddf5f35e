"""``cloud-hub rollout``: the plan and fit table printed, the rollout stored for serve, requests."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_hub.cli.main import main
from cloud_hub.cli.rollout import duration
from cloud_hub.rollouts.store import RolloutStore
from tests.unit.test_fit_cli import hub  # noqa: F401  (the seed fleet and two models)


def _stored(db: Path) -> RolloutStore:
    return RolloutStore(db.parent / "rollouts.db")


def test_start_leaves_out_the_nodes_it_does_not_fit_and_stores_the_plan(
    hub: Path,  # noqa: F811
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["rollout", "start", "--model", "pump-pca", "--version", "1", "--all"]
    assert main([*argv, "--waves", "1,100%", "--bake", "90s", "--shadow", "5m"]) == 0
    out = capsys.readouterr().out
    rollout_id = out.split()[1].rstrip(":")
    assert "pump-pca@1 to 1 nodes" in out
    assert "wave 1  +1 (=1)  edge-c" in out
    assert "edge-a  CHECK memory,power" in out and "edge-b  CHECK offline" in out
    store = _stored(hub)
    rollout = store.load(rollout_id)
    store.close()
    assert rollout is not None
    assert (rollout.waves, rollout.bake_s, rollout.shadow_s) == ([["edge-c"]], 90.0, 300.0)
    assert (rollout.state, rollout.phase) == ("running", "shadow")


def test_a_group_selects_by_node_id_glob(hub: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    argv = ["rollout", "start", "--model", "pump-pca", "--version", "2", "--group", "edge-[bc]"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "to 1 nodes" in out and "edge-c" in out and "edge-b  CHECK offline" in out
    assert "edge-a" not in out


def test_nothing_fits_nothing_is_stored(hub: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    argv = ["rollout", "start", "--model", "pump-pca", "--version", "1", "--node", "edge-a"]
    assert main(argv) == 1
    assert "nothing to roll out" in capsys.readouterr().out
    store = _stored(hub)
    assert store.ids() == []
    store.close()


def test_status_and_requests(hub: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    assert (
        main(["rollout", "start", "--model", "pump-pca", "--version", "2", "--node", "edge-c"]) == 0
    )
    rollout_id = capsys.readouterr().out.split()[1].rstrip(":")
    assert main(["rollout", "status"]) == 0
    assert rollout_id in capsys.readouterr().out
    assert main(["rollout", "status", rollout_id]) == 0
    assert "edge-c" in capsys.readouterr().out
    assert main(["rollout", "pause", rollout_id]) == 0
    store = _stored(hub)
    assert [(r.rollout, r.action) for r in store.take_requests()] == [(rollout_id, "pause")]
    store.close()
    assert main(["rollout", "abort", "nope"]) == 2  # unknown id: a usage error


@pytest.mark.parametrize(
    ("text", "seconds"), [("90", 90.0), ("90s", 90.0), ("10m", 600.0), ("1.5h", 5400.0)]
)
def test_durations(text: str, seconds: float) -> None:
    assert duration(text) == seconds


def test_bad_waves_are_a_usage_error(hub: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    argv = ["rollout", "start", "--model", "pump-pca", "--version", "2", "--all", "--waves", "0"]
    assert main(argv) == 2
    assert "--waves: wave '0'" in capsys.readouterr().err
