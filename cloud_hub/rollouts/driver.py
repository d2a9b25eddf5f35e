"""The rollout state machine: state + what the hub sees + now -> actions (pure).

Phases of a running rollout::

    shadow (--shadow): the first wave's nodes run the candidate beside their model; at the
        end the gate compares the arms (their ShadowReports) -> observe, or stopped
    observe: wait until the hub has watched every node for a bake time (figures from before
        the switch), then send the wave's deploys -> bake
    bake: follow the deploys' acks; a node offline is reported and skipped, one that does not
        answer within ``deploy_timeout_s`` too; a failed deploy or probation rollback fails the
        gate at once; otherwise, a bake time after the last switch, the gate compares the
        wave's figures -> next wave (observe), done, or stopped (the wave's nodes rolled back)

A person may pause (nothing new is sent), resume, or abort (every switched node is rolled
back). The driver mutates the rollout it is given and returns what the hub must send and
record; the I/O is in :mod:`cloud_hub.rollouts.runner`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from cloud_hub.ingest.behaviour import Figures
from cloud_hub.rollouts.gate import Thresholds, Verdict, Windows, judge_shadow, judge_wave
from cloud_hub.rollouts.state import Decision, NodeRun, Rollout
from schemas.messages import Ack, ArmFigures, ModelRef, ShadowReport

# How long after a shadow run's end its final reports are waited for.
SHADOW_GRACE_S = 5.0
_PENDING = frozenset({"sent", "accepted"})


class FiguresView(Protocol):
    """A node's figures for a model version over a time window (the behaviour accumulator)."""

    def window(self, node: str, version: str, start: float, end: float) -> Figures: ...


@dataclass(frozen=True, slots=True)
class World:
    """What the hub sees at ``now``: presence (node -> why it is offline, None if online), each
    node's active model, behaviour figures and the newest shadow reports."""

    now: float
    offline: Mapping[str, str | None]
    models: Mapping[str, ModelRef | None]
    figures: FiguresView
    shadows: Mapping[str, ShadowReport]
    limits: Thresholds
    deploy_timeout_s: float


@dataclass(frozen=True, slots=True)
class SendDeploy:
    node: str
    command_id: str


@dataclass(frozen=True, slots=True)
class SendRollback:
    node: str
    to: str | None
    command_id: str


@dataclass(frozen=True, slots=True)
class SendShadow:
    node: str
    duration_s: float
    command_id: str


@dataclass(frozen=True, slots=True)
class SendStopShadow:
    node: str
    command_id: str


@dataclass(frozen=True, slots=True)
class Record:
    decision: Decision


Action = SendDeploy | SendRollback | SendShadow | SendStopShadow | Record
NewId = Callable[[], str]


def step(rollout: Rollout, world: World, new_id: NewId) -> list[Action]:
    """Move a running rollout on; what to send and record."""
    if rollout.state in ("stopped", "aborted"):
        return _late_switches(rollout)
    if rollout.state != "running":
        return []
    if rollout.phase == "shadow":
        return _shadow(rollout, world, new_id)
    if rollout.phase == "observe":
        return _observe(rollout, world, new_id)
    if rollout.phase == "bake":
        return _bake(rollout, world, new_id)
    return []


def on_ack(rollout: Rollout, ack: Ack, now: float, figures: FiguresView) -> bool:
    """Apply an ack of one of the rollout's commands; True if a node's step changed. At the
    switch, the node's figures over a bake time before it are kept for the gate."""
    run = rollout.nodes.get(ack.node)
    if run is None or run.command != ack.command:
        return False
    before = (run.step, run.reason)
    if run.step in _PENDING:
        if ack.status == "applied":
            run.step, run.switched_at = "applied", now
            old = run.previous.rpartition("@")[2]
            window = figures.window(run.node, old, now - rollout.bake_s, now)
            run.before = window.as_dict()
        else:
            run.step = ack.status
        run.reason = ack.reason
    elif run.step == "applied" and ack.status == "failed":
        run.step, run.reason = "failed", ack.reason  # rolled back on probation by the node
    elif run.step == "rollback_sent" and ack.status in ("applied", "rejected", "failed"):
        run.step = "rolled_back" if ack.status == "applied" else "rollback_failed"
        run.reason = ack.reason
    elif run.step == "shadowing" and ack.status in ("rejected", "failed"):
        run.reason = f"shadow {ack.status}: {ack.reason}"
    if (run.step, run.reason) == before:
        return False
    rollout.touch(run)
    return True


def control(rollout: Rollout, action: str, now: float, by: str) -> list[Action]:
    """A person's ``pause``, ``resume`` or ``abort``; abort rolls back every switched node."""
    if rollout.state not in ("running", "paused"):
        return []
    if action == "pause" and rollout.state == "running":
        rollout.state = "paused"
        return [_record(rollout, now, "pause", None, f"paused by {by}")]
    if action == "resume" and rollout.state == "paused":
        rollout.state = "running"
        return [_record(rollout, now, "resume", None, f"resumed by {by}")]
    if action != "abort":
        return []
    return _end(rollout, now, "aborted", "abort", f"aborted by {by}", verdict=None)


def _shadow(rollout: Rollout, world: World, new_id: NewId) -> list[Action]:
    runs = rollout.wave_nodes(0)
    if not any(r.step == "shadowing" for r in runs):
        actions: list[Action] = []
        for run in runs:
            if _skip_offline(rollout, run, world):
                continue
            run.step, run.command = "shadowing", new_id()
            rollout.touch(run)
            actions.append(SendShadow(run.node, rollout.shadow_s, run.command))
        rollout.phase_started = world.now
        if not actions:
            return _stop(rollout, world.now, "shadow", "no node of the first wave is online")
        return actions
    reports = {
        r.node: world.shadows[r.node]
        for r in runs
        if r.step == "shadowing"
        and r.node in world.shadows
        and world.shadows[r.node].command == r.command
    }
    end = rollout.phase_started + rollout.shadow_s
    finished = all(rep.state != "running" for rep in reports.values()) and len(reports) == len(
        [r for r in runs if r.step == "shadowing"]
    )
    if world.now < end or (not finished and world.now < end + SHADOW_GRACE_S):
        return []
    arms: dict[str, tuple[ArmFigures, ArmFigures]] = {
        node: (rep.active, rep.candidate) for node, rep in reports.items()
    }
    verdict = judge_shadow(arms, world.limits)
    refused = [f"{r.node} {r.reason}" for r in runs if r.step == "shadowing" and r.reason]
    for run in runs:
        if run.step == "shadowing":
            run.step = "waiting"
            rollout.touch(run)
    if not verdict.passed:
        summary = "; ".join([verdict.summary(), *refused])
        return _stop(rollout, world.now, "shadow", summary, verdict)
    rollout.phase, rollout.phase_started = "observe", world.now
    return [_record(rollout, world.now, "shadow", True, verdict.summary(), verdict=verdict)]


def _observe(rollout: Rollout, world: World, new_id: NewId) -> list[Action]:
    if world.now < rollout.taken_at + rollout.bake_s:
        return []  # not yet watched long enough to know the nodes' behaviour before
    actions: list[Action] = []
    for run in rollout.wave_nodes(rollout.wave):
        if _skip_offline(rollout, run, world):
            continue
        model = world.models.get(run.node)
        run.previous = f"{model.name}@{model.version}" if model is not None else ""
        run.step, run.command, run.reason = "sent", new_id(), ""
        rollout.touch(run)
        actions.append(SendDeploy(run.node, run.command))
    rollout.phase, rollout.phase_started = "bake", world.now
    return actions


def _bake(rollout: Rollout, world: World, new_id: NewId) -> list[Action]:
    runs = rollout.wave_nodes(rollout.wave)
    now = world.now
    broken = [r for r in runs if r.step in ("failed", "rejected")]
    if broken:
        text = "; ".join(f"{r.node} {r.step}: {r.reason or 'no reason given'}" for r in broken)
        return _fail_wave(rollout, now, text, None)
    timed_out = now >= rollout.phase_started + world.deploy_timeout_s
    for run in runs:
        if run.step not in _PENDING:
            continue
        why = world.offline.get(run.node)
        if why is not None or timed_out:
            run.step = "offline" if why is not None else "no_answer"
            run.reason = why or f"no answer within {world.deploy_timeout_s:g} s"
            rollout.touch(run)
    if any(r.step in _PENDING for r in runs):
        return []
    switched = [r for r in runs if r.step == "applied" and r.switched_at is not None]
    if not switched:
        return _fail_wave(rollout, now, "no node of the wave took the model", None)
    starts = {r.node: max(r.switched_at or now, rollout.taken_at) for r in switched}
    if now < max(starts.values()) + rollout.bake_s:
        return []
    verdict = _judge(rollout, world, switched, starts)
    missing = [f"{r.node} {r.step}: {r.reason}" for r in runs if r.step in ("offline", "no_answer")]
    summary = verdict.summary() + (f"; not in the gate: {'; '.join(missing)}" if missing else "")
    if not verdict.passed:
        return _fail_wave(rollout, now, summary, verdict)
    actions: list[Action] = [_record(rollout, now, "gate", True, summary, verdict=verdict)]
    if rollout.wave + 1 >= len(rollout.waves):
        rollout.state, rollout.phase = "done", "finished"
        done = f"{rollout.updated()} of {len(rollout.nodes)} nodes run {rollout.ref}"
        actions.append(_record(rollout, now, "finish", None, done))
    else:
        rollout.wave += 1
        rollout.phase, rollout.phase_started = "observe", now
    return actions


def _judge(
    rollout: Rollout, world: World, switched: list[NodeRun], starts: Mapping[str, float]
) -> Verdict:
    now, view = world.now, world.figures
    wave = [
        Windows(
            Figures.from_dict(r.before) if r.before is not None else Figures(),
            view.window(r.node, rollout.version, starts[r.node], now),
        )
        for r in switched
    ]
    since = min(starts.values())
    length = now - since
    control: list[Windows] = []  # not updated: the old model in both windows
    steady: list[Windows] = []  # updated in earlier waves: the new model in both
    for run in rollout.nodes.values():
        model = world.models.get(run.node)
        earlier = run.step == "applied" and run.wave < rollout.wave
        if world.offline.get(run.node) is not None or model is None:
            continue
        if run.step == "waiting" or earlier:
            before = view.window(run.node, model.version, since - length, since)
            windows = Windows(before, view.window(run.node, model.version, since, now))
            (steady if earlier else control).append(windows)
    return judge_wave(wave, control, world.limits, steady)


def _fail_wave(rollout: Rollout, now: float, summary: str, verdict: Verdict | None) -> list[Action]:
    text = f"wave {rollout.wave + 1} failed the gate: {summary}"
    return _end(rollout, now, "stopped", "gate", text, verdict=verdict)


def _stop(
    rollout: Rollout, now: float, kind: str, summary: str, verdict: Verdict | None = None
) -> list[Action]:
    return _end(rollout, now, "stopped", kind, summary, verdict=verdict)


def _end(
    rollout: Rollout,
    now: float,
    state: str,
    kind: str,
    summary: str,
    *,
    verdict: Verdict | None,
) -> list[Action]:
    """Stop for good: roll back every node running the new model, stop shadow runs."""
    rollout.state = "stopped" if state == "stopped" else "aborted"
    rollout.phase, rollout.reason = "finished", summary
    passed = None if kind == "abort" else False
    actions: list[Action] = [_record(rollout, now, kind, passed, summary, verdict=verdict)]
    for run in rollout.nodes.values():
        if run.step == "applied":
            actions.append(_rollback(rollout, run))
        elif run.step == "shadowing":
            run.step = "waiting"
            rollout.touch(run)
            actions.append(SendStopShadow(run.node, f"{run.command[:40]}-stop"))
    return actions


def _late_switches(rollout: Rollout) -> list[Action]:
    """A deploy still under way when the rollout ended that applied after: roll it back too."""
    actions: list[Action] = []
    for run in rollout.nodes.values():
        if run.step == "applied":
            actions.append(_rollback(rollout, run))
    return actions


def _rollback(rollout: Rollout, run: NodeRun) -> SendRollback:
    name, _, version = run.previous.rpartition("@")
    to = version if name == rollout.model and version else None
    run.step, run.command = "rollback_sent", f"{run.command[:40]}-rb"
    rollout.touch(run)
    return SendRollback(run.node, to, run.command)


def _skip_offline(rollout: Rollout, run: NodeRun, world: World) -> bool:
    why = world.offline.get(run.node)
    if why is None:
        return False
    run.step, run.reason = "offline", why
    rollout.touch(run)
    return True


def _record(
    rollout: Rollout,
    now: float,
    kind: str,
    passed: bool | None,
    summary: str,
    *,
    verdict: Verdict | None = None,
) -> Record:
    detail = verdict.as_dict() if verdict is not None else {}
    return Record(Decision(now, rollout.wave, kind, passed, summary, detail))
