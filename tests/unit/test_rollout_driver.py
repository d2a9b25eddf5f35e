"""The rollout state machine: state + observations + now -> actions, without a broker."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from cloud_hub.ingest.behaviour import Figures
from cloud_hub.rollouts import driver
from cloud_hub.rollouts.driver import SendDeploy, SendRollback, SendShadow, World
from cloud_hub.rollouts.gate import Thresholds
from cloud_hub.rollouts.state import Rollout
from schemas.messages import Ack, ArmFigures, ModelRef, ShadowReport

BAKE = 10.0
NODES = ["n1", "n2", "n3", "n4"]
GOOD = Figures(readings=500, flagged=5, counts=[400, 100, 0, 0, 0, 0, 0, 0, 0, 0])
BAD = Figures(readings=500, flagged=400, counts=[0, 0, 0, 0, 50, 150, 300, 0, 0, 0])


class FakeFigures:
    """Each node's figures per version: ``old`` for version 1, ``new`` for version 2."""

    def __init__(self, new: Figures = GOOD, old: Figures = GOOD) -> None:
        self.by_version = {"1": old, "2": new}

    def window(self, node: str, version: str, start: float, end: float) -> Figures:
        figures = self.by_version.get(version)
        return (
            Figures.from_dict(figures.as_dict())
            if figures is not None and end > start
            else Figures()
        )


def make(waves: list[list[str]] | None = None, shadow_s: float = 0.0) -> Rollout:
    rollout = Rollout.new(
        "r1", "pump", "2", waves or [["n1"], ["n2", "n3", "n4"]], now=0.0, created_by="t",
        bake_s=BAKE, shadow_s=shadow_s,
    )  # fmt: skip
    rollout.taken_at = 0.0
    return rollout


def world(
    now: float,
    figures: FakeFigures | None = None,
    offline: dict[str, str] | None = None,
    shadows: dict[str, ShadowReport] | None = None,
    models: dict[str, str] | None = None,
) -> World:
    versions = models or {}
    return World(
        now=now,
        offline={n: (offline or {}).get(n) for n in NODES},
        models={n: ModelRef("pump", versions.get(n, "1")) for n in NODES},
        figures=figures or FakeFigures(),
        shadows=shadows or {},
        limits=Thresholds(),
        deploy_timeout_s=30.0,
    )


def ids() -> Callable[[], str]:
    counter = itertools.count()
    return lambda: f"c{next(counter)}"


def ack(command: str, node: str, status: str, reason: str = "") -> Ack:
    return Ack(
        node=node, boot="b", seq=0, ts=0.0, command=command, command_type="deploy",
        status=status, reason=reason,  # type: ignore[arg-type]
    )  # fmt: skip


def deploy_wave(
    rollout: Rollout, now: float, new_id: Callable[[], str], figures: FakeFigures
) -> list[str]:
    """Step at ``now`` (an observe phase due), answer every deploy with applied; the nodes."""
    actions = driver.step(rollout, world(now, figures), new_id)
    sent = [a for a in actions if isinstance(a, SendDeploy)]
    for action in sent:
        driver.on_ack(rollout, ack(action.command_id, action.node, "applied"), now + 1, figures)
    return [a.node for a in sent]


def test_the_first_wave_waits_until_the_nodes_were_watched_a_bake_time() -> None:
    rollout = make()
    assert driver.step(rollout, world(BAKE - 1), ids()) == []
    actions = driver.step(rollout, world(BAKE), ids())
    assert [(type(a), a.node) for a in actions] == [(SendDeploy, "n1")]  # type: ignore[union-attr]
    assert rollout.phase == "bake"
    assert rollout.nodes["n1"].previous == "pump@1"


def test_a_good_model_goes_wave_by_wave_to_done() -> None:
    rollout, figures, new_id = make(), FakeFigures(), ids()
    assert deploy_wave(rollout, BAKE, new_id, figures) == ["n1"]
    assert rollout.nodes["n1"].before == GOOD.as_dict()  # kept at the switch
    assert driver.step(rollout, world(BAKE + 1 + BAKE - 0.5, figures), new_id) == []  # baking
    actions = driver.step(rollout, world(2 * BAKE + 1, figures), new_id)
    assert [a.decision.passed for a in actions if isinstance(a, driver.Record)] == [True]
    assert (rollout.wave, rollout.phase) == (1, "observe")
    assert deploy_wave(rollout, 2 * BAKE + 2, new_id, figures) == ["n2", "n3", "n4"]
    actions = driver.step(rollout, world(3 * BAKE + 3, figures), new_id)
    kinds = [a.decision.kind for a in actions if isinstance(a, driver.Record)]
    assert kinds == ["gate", "finish"]
    assert rollout.state == "done"
    assert rollout.updated() == 4


def test_a_bad_model_is_stopped_and_its_wave_rolled_back_to_the_version_before() -> None:
    rollout, figures, new_id = make(), FakeFigures(new=BAD), ids()
    deploy_wave(rollout, BAKE, new_id, figures)
    actions = driver.step(rollout, world(2 * BAKE + 1, figures), new_id)
    rollbacks = [a for a in actions if isinstance(a, SendRollback)]
    assert [(a.node, a.to) for a in rollbacks] == [("n1", "1")]
    assert rollout.state == "stopped"
    assert "wave 1 failed the gate" in rollout.reason and "flag_rate" in rollout.reason
    assert all(rollout.nodes[n].step == "waiting" for n in ("n2", "n3", "n4"))  # never sent
    driver.on_ack(rollout, ack(rollbacks[0].command_id, "n1", "applied"), 2 * BAKE + 2, figures)
    assert rollout.nodes["n1"].step == "rolled_back"


def test_a_probation_rollback_fails_the_wave_at_once() -> None:
    rollout, figures, new_id = make(), FakeFigures(), ids()
    deploy_wave(rollout, BAKE, new_id, figures)
    command = rollout.nodes["n1"].command
    driver.on_ack(
        rollout, ack(command, "n1", "failed", "rolled back to pump@1: NaN"), BAKE + 2, figures
    )
    actions = driver.step(rollout, world(BAKE + 2.5, figures), new_id)
    assert rollout.state == "stopped"
    assert "n1 failed: rolled back to pump@1: NaN" in rollout.reason
    assert not [a for a in actions if isinstance(a, SendRollback)]  # the node did it already


def test_an_offline_node_is_reported_and_the_gate_goes_on_without_it() -> None:
    rollout, figures, new_id = make([["n1", "n2", "n3"]]), FakeFigures(), ids()
    gone = {"n3": "offline since 2026-11-30 23:00:00 UTC"}
    actions = driver.step(rollout, world(BAKE, figures, offline=gone), new_id)
    assert sorted(a.node for a in actions if isinstance(a, SendDeploy)) == ["n1", "n2"]
    assert rollout.nodes["n3"].step == "offline"
    assert rollout.nodes["n3"].reason == gone["n3"]
    for action in actions:
        assert isinstance(action, SendDeploy)
        driver.on_ack(rollout, ack(action.command_id, action.node, "applied"), BAKE + 1, figures)
    actions = driver.step(rollout, world(2 * BAKE + 1, figures, offline=gone), new_id)
    record = next(a.decision for a in actions if isinstance(a, driver.Record))
    assert record.passed and "not in the gate: n3 offline: offline since" in record.summary
    assert rollout.state == "done"


def test_a_node_that_goes_quiet_is_not_waited_for_beyond_the_deploy_timeout() -> None:
    rollout, figures, new_id = make([["n1", "n2"]]), FakeFigures(), ids()
    actions = driver.step(rollout, world(BAKE, figures), new_id)
    first = next(a for a in actions if isinstance(a, SendDeploy) and a.node == "n1")
    driver.on_ack(rollout, ack(first.command_id, "n1", "applied"), BAKE + 1, figures)
    assert driver.step(rollout, world(BAKE + 29, figures), new_id) == []  # n2 still awaited
    driver.step(rollout, world(BAKE + 30, figures), new_id)
    assert rollout.nodes["n2"].step == "no_answer"
    assert "no answer within 30 s" in rollout.nodes["n2"].reason
    driver.step(rollout, world(BAKE + 31, figures), new_id)
    assert rollout.state == "done"


def test_abort_rolls_back_every_switched_node_and_pause_holds_the_rollout() -> None:
    rollout, figures, new_id = make(), FakeFigures(), ids()
    deploy_wave(rollout, BAKE, new_id, figures)
    driver.control(rollout, "pause", BAKE + 2, "ops")
    assert driver.step(rollout, world(5 * BAKE, figures), new_id) == []
    assert rollout.wave == 0
    driver.control(rollout, "resume", 5 * BAKE, "ops")
    driver.step(rollout, world(5 * BAKE, figures), new_id)  # gate passes, wave 2 observes
    deploy_wave(rollout, 5 * BAKE + 1, new_id, figures)
    actions = driver.control(rollout, "abort", 5 * BAKE + 3, "ops")
    assert sorted(a.node for a in actions if isinstance(a, SendRollback)) == NODES
    assert rollout.state == "aborted"
    assert driver.control(rollout, "resume", 5 * BAKE + 4, "ops") == []  # over for good


def test_after_a_restart_the_bake_runs_again_from_the_takeover() -> None:
    rollout, figures, new_id = make(), FakeFigures(), ids()
    deploy_wave(rollout, BAKE, new_id, figures)
    rollout.taken_at = 100.0  # a new serve took over long after the switch
    assert driver.step(rollout, world(100.0 + BAKE - 1, figures), new_id) == []
    actions = driver.step(rollout, world(100.0 + BAKE, figures), new_id)
    assert any(isinstance(a, driver.Record) and a.decision.passed for a in actions)


def report(node: str, command: str, candidate_flagged: int, state: str = "done") -> ShadowReport:
    def arm(version: str, flagged: int) -> ArmFigures:
        counts = GOOD.counts if flagged < 100 else BAD.counts
        return ArmFigures(
            model=ModelRef("pump", version), threshold=1.0, readings=500, flagged=flagged,
            score_counts=counts,
        )  # fmt: skip

    return ShadowReport(
        node=node, boot="b", seq=1, ts=1.0, command=command, state=state,  # type: ignore[arg-type]
        start=0.0, end=1.0, active=arm("1", 5), candidate=arm("2", candidate_flagged),
        agreement=0.9, cpu_share=0.05,
    )  # fmt: skip


@pytest.mark.parametrize(("flagged", "passed"), [(6, True), (400, False)])
def test_a_shadow_phase_gates_the_first_wave_on_the_two_arms(flagged: int, passed: bool) -> None:
    rollout, new_id = make(shadow_s=20.0), ids()
    actions = driver.step(rollout, world(0.0), new_id)
    assert [(type(a), a.node) for a in actions] == [(SendShadow, "n1")]  # type: ignore[union-attr]
    command = rollout.nodes["n1"].command
    running = {"n1": report("n1", command, flagged, state="running")}
    assert driver.step(rollout, world(10.0, shadows=running), new_id) == []
    done = {"n1": report("n1", command, flagged)}
    actions = driver.step(rollout, world(20.0, shadows=done), new_id)
    assert [a.decision.passed for a in actions if isinstance(a, driver.Record)] == [passed]
    assert rollout.state == ("running" if passed else "stopped")
    assert rollout.phase == ("observe" if passed else "finished")


def test_a_shadow_run_without_reports_stops_the_rollout_after_a_grace() -> None:
    rollout, new_id = make(shadow_s=20.0), ids()
    driver.step(rollout, world(0.0), new_id)
    assert driver.step(rollout, world(20.0 + driver.SHADOW_GRACE_S - 1), new_id) == []
    driver.step(rollout, world(20.0 + driver.SHADOW_GRACE_S), new_id)
    assert rollout.state == "stopped"
    assert "no shadow report" in rollout.reason


def test_acks_of_other_commands_change_nothing() -> None:
    rollout, figures = make(), FakeFigures()
    deploy_wave(rollout, BAKE, ids(), figures)
    assert not driver.on_ack(rollout, ack("someone-else", "n1", "failed"), BAKE + 2, figures)
    assert rollout.nodes["n1"].step == "applied"


def test_a_node_refusing_the_shadow_run_is_named_in_the_stop() -> None:
    rollout, new_id = make(shadow_s=20.0), ids()
    driver.step(rollout, world(0.0), new_id)
    command = rollout.nodes["n1"].command
    refusal = ack(command, "n1", "rejected", "unknown command type shadow")
    assert driver.on_ack(rollout, refusal, 1.0, FakeFigures())
    driver.step(rollout, world(20.0 + driver.SHADOW_GRACE_S), new_id)
    assert rollout.state == "stopped"
    assert "n1 shadow rejected: unknown command type shadow" in rollout.reason


def test_a_deploy_that_applies_after_an_abort_is_rolled_back_too() -> None:
    rollout, figures, new_id = make([["n1", "n2"]]), FakeFigures(), ids()
    actions = driver.step(rollout, world(BAKE, figures), new_id)
    late = next(a for a in actions if isinstance(a, SendDeploy) and a.node == "n2")
    driver.control(rollout, "abort", BAKE + 1, "ops")
    assert driver.step(rollout, world(BAKE + 2, figures), new_id) == []
    driver.on_ack(rollout, ack(late.command_id, "n2", "applied"), BAKE + 3, figures)
    actions = driver.step(rollout, world(BAKE + 4, figures), new_id)
    assert [(a.node, a.to) for a in actions if isinstance(a, SendRollback)] == [("n2", "1")]
