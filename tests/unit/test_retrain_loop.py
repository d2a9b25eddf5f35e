"""The loop's driver in serve, without a broker: drift reports into a real fleet state, the
real table on disk, commands onto an in-memory wire, a scripted promoter."""

from __future__ import annotations

import threading
from dataclasses import replace
from pathlib import Path
from typing import Literal, TypeVar, cast

import msgspec
import pytest

from cloud_hub.commands.identity import HubIdentity
from cloud_hub.commands.ledger import CommandRecord
from cloud_hub.commands.sender import CommandSender
from cloud_hub.config import RetrainLoopConfig
from cloud_hub.ingest.fleet import FleetState
from cloud_hub.retraining.compare import Counts
from cloud_hub.retraining.loop import RetrainLoop
from cloud_hub.retraining.promoter import PromotionStatus
from cloud_hub.retraining.store import LoopStore
from schemas.codec import decode
from schemas.messages import Ack, Command, Drift, ResultBatch, Retrain, Status
from schemas.samples import SAMPLES

NODE = "pump-01"  # the samples' node
S = TypeVar("S", bound=msgspec.Struct)


class Wire:
    def __init__(self) -> None:
        self.sent: list[Command] = []

    def offer(self, topic: str, payload: bytes) -> Literal["queued", "full", "refused"]:
        self.sent.append(decode("cmd", payload, topic))
        return "queued"

    def record_command(self, record: CommandRecord) -> None:
        pass


class Promoter:
    def __init__(self) -> None:
        self.promoted: list[tuple[str, str, str]] = []
        self.state: PromotionStatus = PromotionStatus("baking")

    def promote(self, node: str, model: str, version: str, now: float) -> str:
        self.promoted.append((node, model, version))
        return "h1"

    def status(self, handle: str, now: float) -> PromotionStatus:
        return self.state


def drift(change: float, ts: float) -> Drift:
    sample = cast(Drift, SAMPLES["drift"])
    channels = [
        replace_struct(c, change=change * (c.channel == "pressure")) for c in sample.channels
    ]
    return replace_struct(sample, ts=ts, channels=channels)


def replace_struct(value: S, **changes: object) -> S:
    return msgspec.structs.replace(value, **changes)


class Harness:
    def __init__(self, tmp: Path, approval: Literal["manual", "auto"] = "manual") -> None:
        self.fleet = FleetState(offline_after_s=120)
        status = cast(Status, SAMPLES["status"])
        self.fleet.apply_status(replace_struct(status, ts=0.0), 0.0)
        self.wire, self.promoter = Wire(), Promoter()
        self.store = LoopStore(tmp / "retrain.db")
        self.baselines: dict[str, Counts] = {}  # what the promoter reads as "before"
        config = RetrainLoopConfig(enabled=True, hold_s=10, readings=500, approval=approval)
        self.loop = RetrainLoop(
            config,
            store=self.store,
            fleet=self.fleet,
            lock=threading.Lock(),
            captures_dir=tmp / "captures",
            models_dir=tmp / "models",
            sender=CommandSender(self.wire, HubIdentity("hub"), self.wire, None, "serve"),
            promoter=self.promoter,
            baselines=self.baselines,
        )

    def report(self, change: float, now: float) -> None:
        self.fleet.apply_drift(drift(change, now), now)
        self.loop.tick(now)


@pytest.fixture
def harness(tmp_path: Path) -> Harness:
    return Harness(tmp_path)


def test_a_capture_is_asked_for_once_drift_has_held_and_not_before(harness: Harness) -> None:
    harness.report(2.0, 100.0)
    harness.report(2.0, 105.0)
    assert harness.wire.sent == []
    harness.report(0.3, 108.0)  # a calm report breaks the spell
    harness.report(2.0, 112.0)
    harness.report(2.0, 121.0)
    assert harness.wire.sent == []
    harness.report(2.0, 122.0)
    (command,) = harness.wire.sent
    assert isinstance(command, Retrain) and command.readings == 500 and command.node == NODE
    (run,) = harness.store.open_runs()
    assert run.stage == "capturing" and run.capture_command == command.id
    assert "pressure" in run.drift_reason
    harness.report(2.0, 130.0)
    assert len(harness.wire.sent) == 1  # one run at a time


def test_a_refused_capture_fails_the_run_and_the_cooldown_holds(harness: Harness) -> None:
    harness.report(2.0, 100.0)
    harness.report(2.0, 110.0)
    (command,) = harness.wire.sent
    ack = cast(Ack, SAMPLES["ack"])
    refusal = replace_struct(
        ack, command=command.id, command_type="retrain", status="rejected", reason="busy"
    )
    harness.loop.on_ack(refusal, 111.0)
    assert harness.loop.counts().open["capturing"] == 1  # as of the last round (/metrics)
    harness.report(2.0, 112.0)
    (run,) = harness.store.runs()
    assert run.stage == "failed" and "busy" in run.note
    counts = harness.loop.counts()
    assert counts.ended == {"promoted": 0, "discarded": 0, "failed": 1}
    assert sum(counts.open.values()) == 0
    harness.report(2.0, 200.0)
    assert len(harness.wire.sent) == 1  # cooling down for a day


def test_an_approved_candidate_is_promoted_and_its_outcome_recorded(harness: Harness) -> None:
    harness.report(2.0, 100.0)
    harness.report(2.0, 110.0)
    (run,) = harness.store.open_runs()
    waiting = replace(run, stage="awaiting_approval", candidate_version="2")
    assert harness.store.advance("capturing", waiting, "awaiting_approval", "test")
    harness.report(2.0, 112.0)
    assert harness.promoter.promoted == []  # manual: waits
    approved = replace(waiting, stage="approved")
    assert harness.store.advance("awaiting_approval", approved, "approved", "by alice")
    harness.report(2.0, 114.0)
    assert harness.promoter.promoted == [(NODE, "pump-pca", "2")]
    harness.promoter.state = PromotionStatus("rolled_back", "worse", {"rate_after": 0.3})
    harness.report(2.0, 116.0)
    (done,) = harness.store.runs()
    assert done.stage == "discarded" and done.figures["rate_after"] == 0.3
    assert [s.step for s in harness.store.steps(done.id)][-2:] == ["promoting", "discarded"]


def test_with_automatic_approval_a_registered_candidate_is_promoted_at_once(
    tmp_path: Path,
) -> None:
    auto = Harness(tmp_path, approval="auto")
    auto.report(2.0, 100.0)
    auto.report(2.0, 110.0)
    (run,) = auto.store.open_runs()
    waiting = replace(run, stage="awaiting_approval", candidate_version="2")
    assert auto.store.advance("capturing", waiting, "awaiting_approval", "test")
    auto.report(2.0, 111.5)
    assert auto.promoter.promoted == [(NODE, "pump-pca", "2")]
    auto.promoter.state = PromotionStatus("promoted", "flag rate 90% before, 0% after")
    auto.report(2.0, 113.0)
    (done,) = auto.store.runs()
    assert done.stage == "promoted"
    assert "approval = auto" in auto.store.steps(done.id)[-2].detail


def test_baselines_follow_the_open_runs(harness: Harness) -> None:
    harness.fleet.apply_result(
        cast(ResultBatch, SAMPLES["result"]), 2, 99.0
    )  # 3 readings, 2 flagged
    harness.report(2.0, 100.0)
    harness.report(2.0, 110.0)
    harness.report(2.0, 111.5)
    assert harness.baselines == {NODE: Counts(3, 2)}


def test_a_bug_in_a_round_is_logged_and_counted_and_serve_goes_on(
    harness: Harness, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(node: str, model: str, version: str, now: float) -> str:
        raise RuntimeError("promoter bug")

    harness.promoter.promote = broken  # type: ignore[method-assign]
    harness.report(2.0, 100.0)
    harness.report(2.0, 110.0)
    (run,) = harness.store.open_runs()
    approved = replace(run, stage="approved", candidate_version="2")
    assert harness.store.advance("capturing", approved, "approved", "test")
    harness.report(2.0, 112.0)  # does not raise
    assert harness.loop.internal_errors == 1 and "promoter bug" in caplog.text
    assert harness.store.open_runs()[0].stage == "approved"  # tried again next round
