"""Builds the retrain loop for ``serve`` from its settings and serve's own parts."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

from cloud_hub.commands import keys
from cloud_hub.commands.identity import HubIdentity
from cloud_hub.commands.ledger import Ledger
from cloud_hub.commands.sender import CommandSender, Publisher
from cloud_hub.config import HubConfig
from cloud_hub.ingest.fleet import FleetState
from cloud_hub.models.catalog import Catalog
from cloud_hub.retraining.compare import Counts
from cloud_hub.retraining.loop import RetrainLoop
from cloud_hub.retraining.promoter import DeployPromoter
from cloud_hub.retraining.store import FILE_NAME, LoopStore

ISSUED_BY = "cloud-hub serve (retrain loop)"


def store_path(config: HubConfig) -> Path:
    """The loop's table: ``retrain.db`` beside the registry's file (serve and the CLI)."""
    return Path(config.store.db).parent / FILE_NAME


def retrain_loop(
    config: HubConfig,
    *,
    fleet: FleetState,
    lock: AbstractContextManager[object],
    publisher: Publisher,
    identity: HubIdentity,
    ledger: Ledger,
    catalog: Catalog,
) -> RetrainLoop | None:
    """The loop, or None when ``retrain_loop.enabled`` is false. Its table is ``retrain.db``
    beside the registry's file."""
    loop_config = config.retrain_loop
    if not loop_config.enabled:
        return None
    key = config.security.signing_key
    sender = CommandSender(
        publisher, identity, ledger, keys.load(Path(key)) if key else None, ISSUED_BY
    )
    baselines: dict[str, Counts] = {}

    def counts(node: str) -> tuple[Counts, str] | None:
        state = fleet.node(node)
        if state is None:
            return None
        version = state.model.version if state.model is not None else ""
        return Counts(state.readings, state.anomalous), version

    promoter = DeployPromoter(
        sender,
        catalog,
        counts,
        baselines.get,
        bake_s=loop_config.bake_s,
        tolerance=loop_config.bake_tolerance,
        timeout_s=loop_config.command_timeout_s,
    )
    return RetrainLoop(
        loop_config,
        store=LoopStore(store_path(config)),
        fleet=fleet,
        lock=lock,
        captures_dir=config.store.captures_path(),
        models_dir=config.store.models_path(),
        sender=sender,
        promoter=promoter,
        baselines=baselines,
        promoter_acks=promoter.on_ack,
    )
