"""The drift -> retrain loop's decisions (pure: values in, a step out; time is an argument).

A node's run of the loop (a :class:`Work`) moves through stages::

    capturing -> training -> awaiting_approval -> approved -> promoting -> promoted
        |            |              |                              |
        +-> failed   +-> discarded  +-> discarded (rejected)       +-> discarded (rolled back)

:func:`decide` says what to do next for one node from its open run (if any), how long its drift
state has been ``drifting``, when its last run ended and what the I/O side observed (capture
stored, command refused, promotion status). The driver (:mod:`cloud_hub.retraining.loop`)
carries the step out and records it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final, Literal

Stage = Literal[
    "capturing",
    "training",
    "awaiting_approval",
    "approved",
    "promoting",
    "promoted",
    "discarded",
    "failed",
]
OPEN_STAGES: Final[frozenset[str]] = frozenset(
    {"capturing", "training", "awaiting_approval", "approved", "promoting"}
)
StepKind = Literal["wait", "capture", "train", "give_up", "promote", "promoted", "discard"]
PromotionState = Literal["promoting", "baking", "promoted", "rolled_back", "failed"]


@dataclass(frozen=True, slots=True)
class Policy:
    """The parts of ``[retrain_loop]`` that decide (see cloud_hub.config.RetrainLoopConfig)."""

    hold_s: float
    cooldown_s: float
    approval: Literal["manual", "auto"] = "manual"


@dataclass(frozen=True, slots=True)
class Work:
    """One run of the loop on one node; ``figures`` hold what each step measured."""

    id: str
    node: str
    stage: Stage
    started_at: float
    updated_at: float
    drift_reason: str
    model: str
    current_version: str
    candidate_version: str = ""
    capture_command: str = ""
    capture_deadline: float = math.inf
    promotion: str = ""
    note: str = ""
    figures: dict[str, float] = field(default_factory=dict)

    @property
    def open(self) -> bool:
        """True until the run has ended (promoted, discarded or failed)."""
        return self.stage in OPEN_STAGES


@dataclass(frozen=True, slots=True)
class Facts:
    """What the driver observed about one node this round."""

    drifting_since: float | None = None
    last_ended_at: float | None = None
    online: bool = True
    model: tuple[str, str] | None = None
    capture_ready: bool = False
    capture_refused: str = ""
    promotion: PromotionState | None = None
    promotion_note: str = ""


@dataclass(frozen=True, slots=True)
class Step:
    """What to do, and why in words (the ledger line)."""

    kind: StepKind
    reason: str = ""


def drifting_since(previous: float | None, level: str | None, now: float) -> float | None:
    """When the node's current unbroken ``drifting`` spell began (None: not drifting now)."""
    if level != "drifting":
        return None
    return previous if previous is not None else now


def decide(work: Work | None, facts: Facts, policy: Policy, now: float) -> Step:
    """The next step for one node."""
    if work is None or not work.open:
        return _start(facts, policy, now)
    if work.stage == "capturing":
        return _capturing(work, facts, now)
    if work.stage == "awaiting_approval":
        if policy.approval == "auto":
            return Step("promote", "approved by policy (approval = auto)")
        return Step("wait", "awaiting approval")
    if work.stage == "approved":
        return Step("promote", "approved")
    if work.stage == "promoting":
        return _promoting(facts)
    return Step("wait", "training")


def _start(facts: Facts, policy: Policy, now: float) -> Step:
    if facts.drifting_since is None:
        return Step("wait", "not drifting")
    held = now - facts.drifting_since
    if held < policy.hold_s:
        return Step("wait", f"drifting for {held:.0f} s of {policy.hold_s:g} s")
    if facts.last_ended_at is not None and now - facts.last_ended_at < policy.cooldown_s:
        left = policy.cooldown_s - (now - facts.last_ended_at)
        return Step("wait", f"cooling down: {left:.0f} s until another run may start")
    if not facts.online:
        return Step("wait", "drifting but offline")
    if facts.model is None:
        return Step("wait", "drifting but its model is not known yet")
    return Step("capture", f"drifting for {held:.0f} s (hold {policy.hold_s:g} s)")


def _capturing(work: Work, facts: Facts, now: float) -> Step:
    if facts.capture_ready:
        return Step("train", "capture stored")
    if facts.capture_refused:
        return Step("give_up", f"capture refused by the node: {facts.capture_refused}")
    if now >= work.capture_deadline:
        return Step("give_up", "capture did not arrive in time")
    return Step("wait", "capturing")


def _promoting(facts: Facts) -> Step:
    state, note = facts.promotion, facts.promotion_note
    if state == "promoted":
        return Step("promoted", note or "baked without getting worse")
    if state in ("rolled_back", "failed"):
        return Step("discard", note or f"promotion {state}")
    return Step("wait", note or (state or "promoting"))


def after_comparison(passed: bool) -> Stage:
    """The stage a candidate goes to once compared: kept for approval, or discarded."""
    return "awaiting_approval" if passed else "discarded"
