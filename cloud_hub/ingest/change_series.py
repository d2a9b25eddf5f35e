"""What /metrics shows of model changes (pure): rollouts, the retrain loop and shadow runs.

Every label is a fixed enum (state, decision, stage, outcome): no rollout, run or node id, so
these are a few dozen lines whatever the fleet's size. ``cloud-hub rollout status``,
``approvals`` and ``shadow status`` name the nodes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Final, get_args, get_type_hints

from cloud_hub.ingest.fleet_series import Family
from cloud_hub.retraining.loop import LoopCounts
from cloud_hub.rollouts.runner import RolloutCounts
from schemas.messages import ShadowReport

SHADOW_STATES: Final[tuple[str, ...]] = get_args(get_type_hints(ShadowReport)["state"])


def rollout_families(counts: RolloutCounts) -> list[Family]:
    """``edgeml_rollouts{state}`` and ``edgeml_rollout_gate_decisions_total{decision}``."""
    states = Family("edgeml_rollouts", "gauge", "Rollouts by state.")
    states.samples = [("edgeml_rollouts", {"state": s}, n) for s, n in counts.states.items()]
    decisions = Family(
        "edgeml_rollout_gate_decisions",
        "counter",
        "Rollout gate decisions (waves and shadow phases) since the hub started.",
    )
    decisions.samples = [
        ("edgeml_rollout_gate_decisions_total", {"decision": d}, n)
        for d, n in counts.decisions.items()
    ]
    return [states, decisions]


def retrain_families(counts: LoopCounts) -> list[Family]:
    """``edgeml_retrain_runs{stage}`` (open runs) and ``edgeml_retrain_outcomes_total{outcome}``."""
    runs = Family(
        "edgeml_retrain_runs", "gauge", "Open runs of the drift -> retrain loop by stage."
    )
    runs.samples = [("edgeml_retrain_runs", {"stage": s}, n) for s, n in counts.open.items()]
    ended = Family(
        "edgeml_retrain_outcomes",
        "counter",
        "Runs of the drift -> retrain loop ended since the hub started, by outcome.",
    )
    ended.samples = [
        ("edgeml_retrain_outcomes_total", {"outcome": o}, n) for o, n in counts.ended.items()
    ]
    return [runs, ended]


def shadow_families(reports: Mapping[str, ShadowReport]) -> list[Family]:
    """``edgeml_shadow_runs{state}``: nodes by the state of their newest shadow report."""
    by_state: Counter[str] = Counter(r.state for r in reports.values())
    family = Family(
        "edgeml_shadow_runs", "gauge", "Nodes by the state of their newest shadow-run report."
    )
    family.samples = [("edgeml_shadow_runs", {"state": s}, by_state[s]) for s in SHADOW_STATES]
    return [family]
