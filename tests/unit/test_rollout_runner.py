"""serve's rollout runner on real stores and fleet state, a recording publisher for the broker."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import msgspec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_hub.commands.identity import HubIdentity
from cloud_hub.commands.ledger import Ledger
from cloud_hub.config import RolloutConfig
from cloud_hub.ingest.behaviour import Behaviour
from cloud_hub.ingest.fleet import FleetState
from cloud_hub.models.catalog import CatalogEntry
from cloud_hub.rollouts.runner import RolloutRunner
from cloud_hub.rollouts.state import Rollout
from cloud_hub.rollouts.store import RolloutStore
from schemas.codec import decode
from schemas.messages import Ack, Deploy, ModelRef, Status
from schemas.samples import MANIFEST
from schemas.signing import parse_public_key, public_key_text, verify


class Recorder:
    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def offer(self, topic: str, payload: bytes) -> Literal["queued", "full", "refused"]:
        self.sent.append((topic, payload))
        return "queued"


class OneModel:
    def get(self, name: str, version: str) -> CatalogEntry | None:
        manifest = msgspec.structs.replace(MANIFEST, name=name, version=version)
        return CatalogEntry(name, version, "00", 1000, "pca", "t", 0.0, 0.0, 1.0, [], manifest)


def birth(node: str, ts: float, state: str = "online") -> Status:
    return Status(
        node=node, boot="b", seq=0, ts=ts, state=state, started_at=0.0,  # type: ignore[arg-type]
        models=[ModelRef("pump-pca", "1")],
    )  # fmt: skip


def test_serve_sends_signed_recorded_deploys_and_reports_an_offline_node(tmp_path: Path) -> None:
    store = RolloutStore(tmp_path / "rollouts.db")
    store.create(
        Rollout.new("r1", "pump-pca", "2", [["a", "b"]], now=0.0, created_by="t", bake_s=5)
    )
    fleet = FleetState(offline_after_s=60)
    fleet.apply_status(birth("a", 1.0), now=1.0)
    fleet.apply_status(birth("b", 1.0), now=1.0)
    fleet.apply_status(birth("b", 2.0, "offline"), now=2.0)
    key = Ed25519PrivateKey.generate()
    ledger = Ledger(tmp_path / "ledger.db")
    out = Recorder()
    runner = RolloutRunner(
        store, fleet, Behaviour(), catalog=OneModel(), ledger=ledger, publisher=out,
        identity=HubIdentity("cloud-hub"), config=RolloutConfig(tick_s=0.5), signing_key=key,
    )  # fmt: skip
    runner.tick(10.0)  # takes the rollout over; watches its nodes for a bake time first
    assert out.sent == []
    runner.tick(15.0)
    assert [topic for topic, _ in out.sent] == ["edgeml/v1/a/cmd"]
    deploy = decode("cmd", out.sent[0][1])
    assert isinstance(deploy, Deploy) and deploy.manifest.version == "2"
    verify(deploy, [parse_public_key(public_key_text(key))])  # signed by the hub's key
    record = ledger.command(deploy.id)
    assert record is not None and record.issued_by == "cloud-hub serve: rollout r1"
    ack = Ack(node="a", boot="b", seq=1, ts=16.0, command=deploy.id, command_type="deploy",
              status="applied")  # fmt: skip
    assert runner.on_ack(ack, 16.0) == 1
    stored = store.load("r1")
    assert stored is not None
    assert stored.nodes["a"].step == "applied"
    assert stored.nodes["b"].step == "offline"
    assert stored.nodes["b"].reason.startswith("offline since 1970-01-01 00:00:01 UTC")
    runner.tick(16.5)
    assert runner.counts().states["running"] == 1
    ledger.close()
    store.close()
