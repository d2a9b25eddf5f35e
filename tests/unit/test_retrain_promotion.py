"""The default promoter (deploy, bake, roll back if worse), serve's command sender and the
loop's table, with an in-memory publisher and ledger (no broker, no clock)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path
from typing import Literal

import msgspec
import pytest

from cloud_hub.commands.identity import HubIdentity
from cloud_hub.commands.ledger import CommandRecord, LedgerError
from cloud_hub.commands.sender import CommandSender, SendError
from cloud_hub.models.catalog import Catalog
from cloud_hub.retraining.compare import Counts
from cloud_hub.retraining.policy import Work
from cloud_hub.retraining.promoter import DeployPromoter
from cloud_hub.retraining.store import LoopStore
from schemas.codec import decode
from schemas.messages import Ack, Command, Deploy, Rollback
from schemas.samples import MANIFEST

NODE = "pump-1"


class Wire:
    """Publisher and ledger: what serve would have sent and recorded."""

    def __init__(self) -> None:
        self.sent: list[Command] = []
        self.records: list[CommandRecord] = []
        self.answer: Literal["queued", "full", "refused"] = "queued"

    def offer(self, topic: str, payload: bytes) -> Literal["queued", "full", "refused"]:
        assert topic == f"edgeml/v1/{NODE}/cmd"
        self.sent.append(decode("cmd", payload, topic))
        return self.answer

    def record_command(self, record: CommandRecord) -> None:
        self.records.append(record)


class Fleet:
    """The node's counters as the fleet state holds them."""

    def __init__(self) -> None:
        self.counts = Counts(1000, 900)
        self.version = "1"

    def __call__(self, node: str) -> tuple[Counts, str] | None:
        return (self.counts, self.version) if node == NODE else None

    def score(self, readings: int, flagged: int) -> None:
        self.counts = Counts(self.counts.readings + readings, self.counts.anomalous + flagged)


@pytest.fixture
def catalog(tmp_path: Path) -> Catalog:
    data = b"candidate weights"
    manifest = msgspec.structs.replace(
        MANIFEST, version="2", sha256=hashlib.sha256(data).hexdigest()
    )
    models = Catalog(tmp_path / "models")
    models.add(data, manifest, 0.0, source="tests")
    return models


def promoter(wire: Wire, catalog: Catalog, fleet: Fleet) -> DeployPromoter:
    sender = CommandSender(wire, HubIdentity("cloud-hub"), wire, None, "serve")
    baseline = {NODE: Counts(0, 0)}.get
    return DeployPromoter(sender, catalog, fleet, baseline, bake_s=60, tolerance=0.01, timeout_s=30)


def answer(command: Command, status: str, reason: str = "") -> Ack:
    tag = type(command).__struct_config__.tag
    return Ack(
        node=NODE,
        boot="b",
        seq=0,
        ts=0.0,
        command=command.id,
        command_type=str(tag),
        status=status,  # type: ignore[arg-type]
        reason=reason,
    )


def test_a_better_model_is_deployed_signed_off_after_its_bake(catalog: Catalog) -> None:
    wire, fleet = Wire(), Fleet()
    p = promoter(wire, catalog, fleet)
    handle = p.promote(NODE, MANIFEST.name, "2", now=100.0)
    (deploy,) = wire.sent
    assert isinstance(deploy, Deploy) and deploy.manifest.version == "2"
    assert "promote pump-pca@2" in wire.records[0].issued_by
    assert p.status(handle, 101.0).state == "promoting"
    p.on_ack(answer(deploy, "applied"), 102.0)
    fleet.score(1000, 5)
    assert p.status(handle, 161.0).state == "baking"
    done = p.status(handle, 162.0)
    assert done.state == "promoted" and done.figures == {"rate_before": 0.9, "rate_after": 0.005}


def test_a_worse_model_is_rolled_back_to_the_version_it_replaced(catalog: Catalog) -> None:
    wire, fleet = Wire(), Fleet()
    fleet.counts = Counts(1000, 10)  # 1 % flagged before the switch
    p = promoter(wire, catalog, fleet)
    handle = p.promote(NODE, MANIFEST.name, "2", now=100.0)
    p.on_ack(answer(wire.sent[0], "applied"), 101.0)
    fleet.score(1000, 300)
    assert p.status(handle, 200.0).state == "promoting"  # rolling back
    rollback = wire.sent[-1]
    assert isinstance(rollback, Rollback) and rollback.to == "1"
    p.on_ack(answer(rollback, "applied"), 201.0)
    status = p.status(handle, 202.0)
    assert status.state == "rolled_back" and "30.00% after" in status.note


@pytest.mark.parametrize(
    ("status", "when", "words"),
    [
        ("rejected", 101.0, "deploy rejected: does not fit"),
        (None, 131.0, "no answer to the deploy"),
    ],
    ids=["refused", "silent"],
)
def test_a_deploy_that_does_not_apply_fails_the_promotion(
    catalog: Catalog, status: str | None, when: float, words: str
) -> None:
    wire = Wire()
    p = promoter(wire, catalog, Fleet())
    handle = p.promote(NODE, MANIFEST.name, "2", now=100.0)
    if status is not None:
        p.on_ack(answer(wire.sent[0], status, "does not fit"), when)
    result = p.status(handle, when)
    assert result.state == "failed" and words in result.note


def test_a_promotion_this_process_does_not_know_is_reported_failed(catalog: Catalog) -> None:
    status = promoter(Wire(), catalog, Fleet()).status("from-before-a-restart", 0.0)
    assert status.state == "failed" and "restarted" in status.note


def test_a_command_the_client_refuses_is_an_error_not_a_silent_loss(catalog: Catalog) -> None:
    wire = Wire()
    wire.answer = "full"
    with pytest.raises(SendError, match="not sent: client full"):
        promoter(wire, catalog, Fleet()).promote(NODE, MANIFEST.name, "2", now=0.0)


def test_a_command_the_ledger_cannot_record_is_not_sent(catalog: Catalog) -> None:
    class FullDisk(Wire):
        def record_command(self, record: CommandRecord) -> None:
            raise LedgerError("ledger.db: cannot write the command ledger: disk I/O error")

    wire = FullDisk()
    with pytest.raises(SendError, match="disk I/O error"):
        promoter(wire, catalog, Fleet()).promote(NODE, MANIFEST.name, "2", now=0.0)
    assert wire.sent == []


def test_the_table_moves_a_run_only_from_the_stage_its_writer_saw(tmp_path: Path) -> None:
    store = LoopStore(tmp_path / "retrain.db")
    run = Work("w1", NODE, "awaiting_approval", 1.0, 1.0, "drift", "pump-pca", "1", "2")
    store.start(run, "candidate registered")
    approved = replace(run, stage="approved", updated_at=2.0)
    assert store.advance("awaiting_approval", approved, "approved", "by alice")
    rejected = replace(run, stage="discarded", updated_at=3.0)
    assert not store.advance("awaiting_approval", rejected, "rejected", "by bob")  # too late
    assert store.run("w1") == approved
    assert [s.step for s in store.steps("w1")] == ["awaiting_approval", "approved"]
    assert store.open_runs() == [approved] and store.last_ended() == {}
    store.advance("approved", replace(approved, stage="promoted", updated_at=9.0), "done", "")
    assert store.open_runs() == [] and store.last_ended() == {NODE: 9.0}
    store.close()
