"""``cloud-hub approvals | approve | reject`` on the loop's table (no broker, no serve)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from cloud_hub.cli import session as session_module
from cloud_hub.cli.main import main
from cloud_hub.retraining.policy import Work
from cloud_hub.retraining.store import FILE_NAME, LoopStore

REASON = "pressure: CUSUM 3.2"
FIGURES = {
    "far_current_held_back": 0.97,
    "far_candidate_held_back": 0.0,
    "far_current_reference": 0.001,
    "far_candidate_reference": 0.002,
}


@pytest.fixture
def table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("CLOUD_HUB_CONFIG", raising=False)
    monkeypatch.setattr(session_module, "SYSTEM_CONFIG", tmp_path / "no-hub.toml")
    monkeypatch.setenv("CLOUD_HUB__STORE__DB", str(tmp_path / "hub.db"))
    store = LoopStore(tmp_path / FILE_NAME)
    waiting = Work("a1", "pump-1", "awaiting_approval", 0.0, 0.0, REASON, "pump-pca", "1", "2")
    store.start(replace(waiting, figures=FIGURES), "candidate registered")
    store.start(replace(waiting, id="b2", node="pump-2", stage="failed"), "capture refused")
    store.close()
    return tmp_path / FILE_NAME


def test_approvals_lists_waiting_candidates_with_their_figures(
    table: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["approvals"]) == 0
    out = capsys.readouterr().out
    assert "a1" in out and "pump-pca@1 -> 2" in out and "pressure: CUSUM 3.2" in out
    assert "97.00% -> 0.00%" in out and "0.10% -> 0.20%" in out
    assert "b2" not in out
    assert main(["approvals", "--all"]) == 0
    assert "b2" in capsys.readouterr().out


def test_reject_keeps_the_reason_and_a_decided_run_cannot_be_approved(
    table: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["reject", "a1", "--reason", "maintenance next week"]) == 0
    assert main(["approve", "a1"]) == 1
    assert (
        "not awaiting approval (stage discarded: rejected: maintenance" in capsys.readouterr().out
    )
    store = LoopStore(table)
    assert [s.step for s in store.steps("a1")] == ["awaiting_approval", "discarded"]
    store.close()
    assert main(["approve", "zz"]) == 2  # unknown run: a usage error naming it


def test_approve_moves_the_run_for_serve_to_promote(table: Path) -> None:
    assert main(["approve", "a1"]) == 0
    store = LoopStore(table)
    run = store.run("a1")
    store.close()
    assert run is not None and run.stage == "approved"
