"""The drift -> retrain loop's decisions, table by table (pure: no broker, disk or clock)."""

from __future__ import annotations

import pytest

from cloud_hub.retraining.policy import (
    Facts,
    Policy,
    Stage,
    Work,
    after_comparison,
    decide,
    drifting_since,
)

MANUAL = Policy(hold_s=60, cooldown_s=3600, approval="manual")
AUTO = Policy(hold_s=60, cooldown_s=3600, approval="auto")
NOW = 10_000.0
MODEL = ("pump-pca", "1")


def work(stage: Stage, **changes: object) -> Work:
    fields: dict[str, object] = {
        "id": "w1",
        "node": "pump-1",
        "stage": stage,
        "started_at": NOW - 100,
        "updated_at": NOW - 10,
        "drift_reason": "pressure: CUSUM 3.1",
        "model": "pump-pca",
        "current_version": "1",
        "capture_command": "c1",
        "capture_deadline": NOW + 50,
    }
    return Work(**(fields | changes))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("facts", "kind", "why"),
    [
        (Facts(model=MODEL), "wait", "not drifting"),
        (Facts(drifting_since=NOW - 59, model=MODEL), "wait", "drifting for 59 s of 60 s"),
        (Facts(drifting_since=NOW - 60, model=MODEL), "capture", "drifting for 60 s"),
        (
            Facts(drifting_since=NOW - 600, last_ended_at=NOW - 3599, model=MODEL),
            "wait",
            "cooling down: 1 s",
        ),
        (Facts(drifting_since=NOW - 600, last_ended_at=NOW - 3600, model=MODEL), "capture", ""),
        (Facts(drifting_since=NOW - 600, online=False, model=MODEL), "wait", "offline"),
        (Facts(drifting_since=NOW - 600), "wait", "model is not known"),
    ],
    ids=["ok", "not-held-yet", "held", "cooling", "cooled", "offline", "no-model"],
)
def test_a_run_starts_only_when_drift_has_held_and_the_node_can_capture(
    facts: Facts, kind: str, why: str
) -> None:
    step = decide(None, facts, MANUAL, NOW)
    assert step.kind == kind and why in step.reason


@pytest.mark.parametrize(
    ("run", "facts", "policy", "kind"),
    [
        (work("capturing"), Facts(), MANUAL, "wait"),
        (work("capturing"), Facts(capture_ready=True), MANUAL, "train"),
        (work("capturing"), Facts(capture_refused="busy"), MANUAL, "give_up"),
        (work("capturing", capture_deadline=NOW), Facts(), MANUAL, "give_up"),
        (work("training"), Facts(capture_ready=True), MANUAL, "wait"),
        (work("awaiting_approval"), Facts(), MANUAL, "wait"),
        (work("awaiting_approval"), Facts(), AUTO, "promote"),
        (work("approved"), Facts(), MANUAL, "promote"),
        (work("promoting"), Facts(promotion="baking"), MANUAL, "wait"),
        (work("promoting"), Facts(promotion="promoted"), MANUAL, "promoted"),
        (work("promoting"), Facts(promotion="rolled_back"), MANUAL, "discard"),
        (work("promoting"), Facts(promotion="failed"), MANUAL, "discard"),
    ],
    ids=[
        "capture-pending",
        "capture-stored",
        "capture-refused",
        "capture-late",
        "training",
        "manual-waits",
        "auto-promotes",
        "approved",
        "baking",
        "baked",
        "rolled-back",
        "promotion-failed",
    ],
)
def test_an_open_run_moves_by_what_was_observed(
    run: Work, facts: Facts, policy: Policy, kind: str
) -> None:
    assert decide(run, facts, policy, NOW).kind == kind


@pytest.mark.parametrize("stage", ["promoted", "discarded", "failed"])
def test_an_ended_run_lets_a_new_one_start_after_the_cooldown(stage: Stage) -> None:
    ended = work(stage)
    assert not ended.open
    facts = Facts(drifting_since=NOW - 600, last_ended_at=NOW - 10, model=MODEL)
    assert decide(ended, facts, MANUAL, NOW).kind == "wait"
    later = Facts(drifting_since=NOW - 600, last_ended_at=NOW - 4000, model=MODEL)
    assert decide(ended, later, MANUAL, NOW).kind == "capture"


def test_a_drifting_spell_is_timed_from_its_first_report_and_broken_by_any_other_level() -> None:
    since = drifting_since(None, "drifting", 100.0)
    assert since == 100.0
    assert drifting_since(since, "drifting", 160.0) == 100.0
    assert drifting_since(since, "watch", 170.0) is None
    assert drifting_since(None, None, 180.0) is None


def test_a_compared_candidate_waits_for_approval_only_if_it_passed() -> None:
    assert after_comparison(True) == "awaiting_approval"
    assert after_comparison(False) == "discarded"
