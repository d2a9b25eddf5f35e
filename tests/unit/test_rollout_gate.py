"""The rollout gate, table-driven: figures in, a verdict naming every failed check out."""

from __future__ import annotations

import pytest

from cloud_hub.ingest.behaviour import Figures
from cloud_hub.rollouts.gate import Thresholds, Windows, judge_shadow, judge_wave
from schemas.behaviour import BINS
from schemas.messages import ArmFigures, ModelRef

LIMITS = Thresholds()
LOW = [600, 300, 80, 15, 4, 1, 0, 0, 0, 0]  # scores well under the threshold
HIGH = [0, 0, 10, 40, 150, 300, 300, 150, 40, 10]  # most at or over it


def fig(
    flagged: int = 10,
    *,
    readings: int = 1000,
    counts: list[int] | None = None,
    episodes: int = 0,
    latency: float = 2.0,
    unscored: int = 0,
    errors: int = 0,
    probation: int = 0,
) -> Figures:
    return Figures(
        readings=readings,
        flagged=flagged,
        unscored=unscored,
        counts=list(counts if counts is not None else LOW),
        episodes=episodes,
        latency_sum_ms=latency,
        latency_reports=1,
        errors=errors,
        probation_rollbacks=probation,
    )


NOTHING = Windows(Figures(), Figures())
STEADY = Windows(fig(), fig())

CASES = [
    # (id, wave before -> after, control, failed checks)
    ("same model", Windows(fig(), fig(12)), STEADY, []),
    (
        "flags far more",
        Windows(fig(), fig(400, counts=HIGH)),
        STEADY,
        ["flag_rate", "score_distance"],
    ),
    ("small rise from zero is no alarm", Windows(fig(0), fig(5)), STEADY, []),
    ("ratio alone is no alarm", Windows(fig(1), fig(8)), STEADY, []),
    ("episodes", Windows(fig(), fig(episodes=3)), STEADY, ["episodes"]),
    ("latency", Windows(fig(latency=2.0), fig(latency=12.0)), STEADY, ["latency_p99_ms"]),
    ("latency within the ratio", Windows(fig(latency=2.0), fig(latency=3.5)), STEADY, []),
    ("NaN scores", Windows(fig(), fig(unscored=100)), STEADY, ["unscored_rate"]),
    ("errors", Windows(fig(), fig(errors=2)), STEADY, ["errors"]),
    ("probation rollback", Windows(fig(), fig(probation=1)), STEADY, ["probation_rollbacks"]),
    # The whole plant moved: the nodes not updated flag as much more, so the model is cleared.
    ("plant-wide rise", Windows(fig(), fig(300)), Windows(fig(), fig(310)), []),
    ("plant-wide shift", Windows(fig(), fig(counts=HIGH)), Windows(fig(), fig(counts=HIGH)), []),
    # Without figures from before (a hub restarted before the switch), the control decides.
    (
        "no before: control",
        Windows(Figures(), fig(400, counts=HIGH)),
        STEADY,
        ["flag_rate", "score_distance"],
    ),
    ("no before: control agrees", Windows(Figures(), fig(11)), STEADY, []),
    ("no control: own figures", Windows(fig(), fig(400)), NOTHING, ["flag_rate"]),
]


@pytest.mark.parametrize(
    ("wave", "control", "failed"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_wave_gate(wave: Windows, control: Windows, failed: list[str]) -> None:
    verdict = judge_wave([wave], [control], LIMITS)
    assert sorted({c.name for c in verdict.failed}) == sorted(failed)
    assert verdict.passed is (not failed)
    for name in failed:  # the summary names each failed check with its figures
        assert name in verdict.summary()


def test_too_few_readings_after_the_switch_cannot_pass() -> None:
    verdict = judge_wave([Windows(fig(), fig(readings=10, flagged=0))], [STEADY], LIMITS)
    assert not verdict.passed
    assert "only 10 readings after the switch" in verdict.summary()


def test_nothing_to_compare_with_cannot_pass() -> None:
    verdict = judge_wave([Windows(Figures(), fig())], [], LIMITS)
    assert not verdict.passed
    assert "nothing to compare with" in verdict.summary()


def test_thresholds_are_the_configured_ones() -> None:
    wave = Windows(fig(), fig(40))  # 1 % -> 4 %
    assert not judge_wave([wave], [STEADY], LIMITS).passed
    assert judge_wave([wave], [STEADY], Thresholds(flag_rate_rise=0.05)).passed


def test_episodes_count_per_node_of_the_wave() -> None:
    one_each = Windows(fig(), fig(episodes=1))
    assert judge_wave([one_each] * 3, [STEADY], LIMITS).passed
    assert not judge_wave([Windows(fig(), fig(episodes=3))], [STEADY], LIMITS).passed
    two_each = Windows(fig(), fig(episodes=2))
    assert not judge_wave([two_each] * 3, [STEADY], LIMITS).passed


def test_the_verdict_keeps_its_figures_for_the_record() -> None:
    verdict = judge_wave([Windows(fig(), fig(400, counts=HIGH))], [STEADY], LIMITS)
    record = verdict.as_dict()
    assert record["figures"]["after"]["flagged"] == 400
    assert record["figures"]["control_after"]["readings"] == 1000
    assert {c["name"] for c in record["checks"] if not c["passed"]} == {
        "flag_rate",
        "score_distance",
    }


MID = [200, 300, 300, 150, 40, 10, 0, 0, 0, 0]  # a healthy node's histogram another time


def test_one_nodes_histogram_is_judged_against_how_far_single_nodes_move_by_themselves() -> None:
    # Pooled, the control nodes do not move; each one alone moves as far as the wave's node.
    control = [Windows(fig(counts=LOW), fig(counts=MID)), Windows(fig(counts=MID), fig(counts=LOW))]
    moved = Windows(fig(counts=LOW), fig(counts=MID))
    assert judge_wave([moved], control, LIMITS).passed
    assert not judge_wave([moved], [STEADY, STEADY], LIMITS).passed
    bad = Windows(fig(counts=LOW), fig(counts=HIGH))
    verdict = judge_wave([bad], control, LIMITS)
    assert [c.name for c in verdict.failed] == ["score_distance"]


def arm(
    version: str, flagged: int, counts: list[int], *, unscored: int = 0, latency: float = 2.0
) -> ArmFigures:
    return ArmFigures(
        model=ModelRef("pump", version),
        threshold=1.0,
        readings=1000,
        flagged=flagged,
        unscored=unscored,
        score_counts=counts,
        latency_p99_ms=latency,
    )


SHADOW = [
    ("alike", arm("2", 12, LOW), []),
    ("candidate flags far more", arm("2", 500, HIGH), ["flag_rate", "score_distance"]),
    ("candidate leaves NaN", arm("2", 10, LOW, unscored=200), ["unscored_rate"]),
    ("candidate slow", arm("2", 10, LOW, latency=30.0), ["latency_p99_ms"]),
]


@pytest.mark.parametrize(
    ("candidate", "failed"), [c[1:] for c in SHADOW], ids=[c[0] for c in SHADOW]
)
def test_shadow_gate_compares_the_arms(candidate: ArmFigures, failed: list[str]) -> None:
    reports = {"pump-1": (arm("1", 10, LOW), candidate), "pump-2": (arm("1", 10, LOW), candidate)}
    verdict = judge_shadow(reports, LIMITS)
    assert sorted({c.name for c in verdict.failed}) == sorted(failed)
    assert verdict.passed is (not failed)


def test_no_shadow_report_fails() -> None:
    verdict = judge_shadow({}, LIMITS)
    assert not verdict.passed
    assert "no shadow report" in verdict.summary()


def test_bins_match_the_contract() -> None:
    assert len(LOW) == len(HIGH) == BINS


def test_the_last_wave_takes_its_yardstick_from_the_nodes_updated_before() -> None:
    moved = Windows(fig(counts=LOW), fig(counts=MID))
    assert not judge_wave([moved], [], LIMITS).passed  # no other node: own figures only
    earlier = [Windows(fig(counts=MID), fig(counts=LOW))]
    assert judge_wave([moved], [], LIMITS, steady=earlier).passed
