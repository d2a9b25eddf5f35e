"""What /metrics shows of model changes: fixed label values, zeros included, no ids."""

from __future__ import annotations

from typing import cast

import msgspec

from cloud_hub.ingest.change_series import (
    SHADOW_STATES,
    retrain_families,
    rollout_families,
    shadow_families,
)
from cloud_hub.retraining.loop import LoopCounts
from cloud_hub.rollouts.runner import RolloutCounts
from schemas.messages import ShadowReport
from schemas.samples import SAMPLES

REPORT = cast(ShadowReport, SAMPLES["shadow"])


def test_shadow_runs_count_nodes_by_their_newest_reports_state() -> None:
    reports = {
        "a": REPORT,
        "b": msgspec.structs.replace(REPORT, node="b", state="over_budget"),
        "c": msgspec.structs.replace(REPORT, node="c", state="running"),
    }
    (family,) = shadow_families(reports)
    values = {labels["state"]: value for _, labels, value in family.samples}
    assert values == {s: 0 for s in SHADOW_STATES} | {"running": 2, "over_budget": 1}
    assert set(SHADOW_STATES) == {"running", "done", "stopped", "over_budget", "failed"}


def test_rollout_and_retrain_series_carry_only_fixed_labels() -> None:
    rollouts = RolloutCounts(states={"running": 1, "done": 2}, decisions={"pass": 3, "fail": 1})
    retrain = LoopCounts(open={"capturing": 1, "training": 0}, ended={"promoted": 2})
    samples = [
        s for f in (*rollout_families(rollouts), *retrain_families(retrain)) for s in f.samples
    ]
    assert ("edgeml_rollout_gate_decisions_total", {"decision": "fail"}, 1) in samples
    assert ("edgeml_retrain_runs", {"stage": "capturing"}, 1) in samples
    assert ("edgeml_retrain_outcomes_total", {"outcome": "promoted"}, 2) in samples
    assert {key for _, labels, _ in samples for key in labels} == {
        "state",
        "decision",
        "stage",
        "outcome",
    }
