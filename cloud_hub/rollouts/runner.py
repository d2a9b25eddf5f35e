"""Rollouts inside ``cloud-hub serve``: feed the driver what the hub sees, do what it says.

Every ``tick_s`` the runner takes people's requests from the store (pause, resume, abort),
picks up rollouts the CLI created, steps each running one (:func:`driver.step`), sends the
commands it asks for (signed with the hub's key when one is set, recorded in the command
ledger like the CLI's, published through serve's own MQTT client), and saves the rollout with
its decisions. Acks reach it from serve's ack handling (:meth:`RolloutRunner.on_ack`).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_hub.commands import keys
from cloud_hub.commands.commander import (
    Issue,
    build_deploy,
    build_rollback,
    build_shadow,
    build_stop_shadow,
    new_command_id,
)
from cloud_hub.commands.identity import HubIdentity
from cloud_hub.commands.sender import CommandLedger, CommandSender, Publisher, SendError
from cloud_hub.config import HubConfig, RolloutConfig
from cloud_hub.ingest.behaviour import Behaviour
from cloud_hub.ingest.fleet import FleetState
from cloud_hub.ingest.transport import TransportError
from cloud_hub.models.catalog import CatalogEntry, CatalogError
from cloud_hub.rollouts import driver
from cloud_hub.rollouts.gate import Thresholds
from cloud_hub.rollouts.state import ACTIVE, DECISIONS, STATES, Decision, Rollout
from cloud_hub.rollouts.store import RolloutStore, RolloutStoreError
from schemas.commands import DEFAULT_CHUNK_SIZE
from schemas.messages import Ack, Command

log = logging.getLogger(__name__)

# A finished rollout stays in memory at least this long (and a deploy timeout more), so the
# acks of its rollbacks are recorded and a deploy that applies late is rolled back too.
KEEP_FINISHED_S = 120.0
# A rollout's shadow phase gives the candidate a quarter of a core, the node's default.
SHADOW_CPU_BUDGET = 0.25


class Models(Protocol):
    """The model catalog."""

    def get(self, name: str, version: str) -> CatalogEntry | None: ...


@dataclass(frozen=True, slots=True)
class RolloutCounts:
    """Rollouts by state and gate decisions since start (label values: fixed enums)."""

    states: dict[str, int]
    decisions: dict[str, int]


def thresholds(config: RolloutConfig) -> Thresholds:
    """The gate's limits from the hub config's ``[rollout]``."""
    fields = {f: getattr(config, f) for f in Thresholds.__dataclass_fields__}
    return Thresholds(**fields)


class RolloutRunner:
    """Drives the store's active rollouts from serve's loop (call under serve's lock)."""

    def __init__(
        self,
        store: RolloutStore,
        fleet: FleetState,
        behaviour: Behaviour,
        *,
        catalog: Models,
        ledger: CommandLedger,
        publisher: Publisher,
        identity: HubIdentity,
        config: RolloutConfig,
        signing_key: Ed25519PrivateKey | None = None,
    ) -> None:
        self.store = store
        self._fleet = fleet
        self._behaviour = behaviour
        self._catalog = catalog
        self._sender = CommandSender(publisher, identity, ledger, signing_key, "cloud-hub serve")
        self._config = config
        self._limits = thresholds(config)
        self._rollouts: dict[str, Rollout] = {}
        self._finished: dict[str, float] = {}
        self._commands: dict[str, str] = {}
        self._next_tick = 0.0
        self.decisions: Counter[str] = Counter()
        self._states: dict[str, int] = {}

    @classmethod
    def open(  # noqa: PLR0917  (serve's parts, in the order serve builds them)
        cls,
        config: HubConfig,
        fleet: FleetState,
        behaviour: Behaviour,
        catalog: Models,
        ledger: CommandLedger,
        publisher: Publisher,
        identity: HubIdentity,
    ) -> RolloutRunner:
        """serve's runner: the store at ``store.rollouts_db``, the key at
        ``security.signing_key`` (SigningKeyError if it cannot be read), ``[rollout]``."""
        key = config.security.signing_key
        return cls(
            RolloutStore(config.store.rollouts_path()),
            fleet,
            behaviour,
            catalog=catalog,
            ledger=ledger,
            publisher=publisher,
            identity=identity,
            config=config.rollout,
            signing_key=keys.load(Path(key)) if key else None,
        )

    def on_ack(self, ack: Ack, now: float) -> int:
        """Apply an ack of a rollout's command (saved at once); 1 if it moved a node."""
        rollout = self._rollouts.get(self._commands.get(ack.command, ""))
        if rollout is None or not driver.on_ack(rollout, ack, now, self._behaviour):
            return 0
        self._save(rollout, [])
        return 1

    def tick(self, now: float) -> None:
        """Take requests, pick up new rollouts, step the running ones (at most every tick_s)."""
        if now < self._next_tick:
            return
        self._next_tick = now + self._config.tick_s
        try:
            self._load_new(now)
            for request in self.store.take_requests():
                rollout = self._rollouts.get(request.rollout)
                if rollout is not None:
                    actions = driver.control(rollout, request.action, now, request.by)
                    self._apply(rollout, actions, now)
        except RolloutStoreError as exc:
            log.error("%s", exc)
        for rollout in list(self._rollouts.values()):
            actions = driver.step(rollout, self._world(rollout, now), new_command_id)
            self._apply(rollout, actions, now)
            self._forget_if_done(rollout, now)
        self._behaviour.prune(now)
        try:
            # Read here, on serve's loop: the scrape's thread may not use this connection.
            self._states = self.store.counts()
        except RolloutStoreError as exc:
            log.error("%s", exc)

    def counts(self) -> RolloutCounts:
        """Rollouts by state (as of the last tick) and gate decisions (under serve's lock)."""
        states = {s: self._states.get(s, 0) for s in STATES}
        return RolloutCounts(states, {d: self.decisions[d] for d in DECISIONS})

    def _load_new(self, now: float) -> None:
        for rollout_id in self.store.active_ids():
            if rollout_id in self._rollouts:
                continue
            rollout = self.store.load(rollout_id)
            if rollout is None:
                continue
            rollout.taken_at = now
            rollout.decisions = []
            self._rollouts[rollout_id] = rollout
            horizon = 2 * rollout.bake_s + rollout.shadow_s + self._config.deploy_timeout_s + 10
            for run in rollout.nodes.values():
                self._behaviour.watch(run.node, horizon)
                if run.command:
                    self._commands[run.command] = rollout_id
            log.info(
                "rollout %s of %s: taken over in phase %s of wave %d/%d",
                rollout.id, rollout.ref, rollout.phase, rollout.wave + 1, len(rollout.waves),
            )  # fmt: skip

    def _world(self, rollout: Rollout, now: float) -> driver.World:
        offline: dict[str, str | None] = {}
        models = {}
        for node in rollout.nodes:
            state = self._fleet.node(node)
            models[node] = state.model if state is not None else None
            if state is None:
                offline[node] = "unknown node: the hub never heard from it"
            elif not self._fleet.is_online(state, now):
                offline[node] = f"offline since {_utc(state.last_seen)}"
            else:
                offline[node] = None
        return driver.World(
            now=now,
            offline=offline,
            models=models,
            figures=self._behaviour,
            shadows=self._fleet.shadows,
            limits=self._limits,
            deploy_timeout_s=self._config.deploy_timeout_s,
        )

    def _apply(self, rollout: Rollout, actions: Sequence[driver.Action], now: float) -> None:
        decisions: list[Decision] = []
        for action in actions:
            if isinstance(action, driver.Record):
                decisions.append(action.decision)
                self._count(rollout, action.decision)
                continue
            self._commands[action.command_id] = rollout.id
            try:
                self._sender.send(
                    partial(self._command, rollout, action),
                    now,
                    self._config.deploy_timeout_s,
                    f"rollout {rollout.id}",
                )
            except (CatalogError, TransportError, SendError, ValueError) as exc:
                log.error("rollout %s: cannot send to %s: %s", rollout.id, action.node, exc)
                run = rollout.nodes[action.node]
                run.step, run.reason = "failed", f"hub could not send: {exc}"
                rollout.touch(run)
        if decisions or rollout.dirty:
            self._save(rollout, decisions)

    def _command(self, rollout: Rollout, action: driver.Action, issue: Issue) -> Command:
        if isinstance(action, driver.SendRollback):
            return build_rollback(issue, action.node, action.command_id, action.to)
        if isinstance(action, driver.SendStopShadow):
            return build_stop_shadow(issue, action.node, action.command_id)
        entry = self._entry(rollout)
        if isinstance(action, driver.SendDeploy):
            return build_deploy(
                issue,
                action.node,
                manifest=entry.manifest,
                size=entry.size,
                chunk_size=DEFAULT_CHUNK_SIZE,
                command_id=action.command_id,
            )
        assert isinstance(action, driver.SendShadow)
        return build_shadow(
            issue,
            action.node,
            manifest=entry.manifest,
            size=entry.size,
            chunk_size=DEFAULT_CHUNK_SIZE,
            command_id=action.command_id,
            duration_s=action.duration_s,
            cpu_budget=SHADOW_CPU_BUDGET,
        )

    def _entry(self, rollout: Rollout) -> CatalogEntry:
        entry = self._catalog.get(rollout.model, rollout.version)
        if entry is None:
            raise ValueError(f"{rollout.ref} is no longer in the catalog")
        return entry

    def _count(self, rollout: Rollout, decision: Decision) -> None:
        log.info("rollout %s (%s) %s: %s", rollout.id, rollout.ref, decision.kind, decision.summary)
        if decision.passed is not None and decision.kind in ("gate", "shadow"):
            self.decisions["pass" if decision.passed else "fail"] += 1

    def _save(self, rollout: Rollout, decisions: list[Decision]) -> None:
        try:
            self.store.save(rollout, decisions)
        except RolloutStoreError as exc:
            # The rollout goes on in memory; its changed nodes stay marked for the next save.
            log.error("%s", exc)

    def _forget_if_done(self, rollout: Rollout, now: float) -> None:
        if rollout.state in ACTIVE:
            return
        ended = self._finished.setdefault(rollout.id, now)
        if now - ended < KEEP_FINISHED_S + self._config.deploy_timeout_s:
            return
        del self._rollouts[rollout.id]
        del self._finished[rollout.id]
        for command in [c for c, r in self._commands.items() if r == rollout.id]:
            del self._commands[command]
        watched = {n for r in self._rollouts.values() for n in r.nodes}
        self._behaviour.unwatch(n for n in rollout.nodes if n not in watched)


def _utc(ts: float | None) -> str:
    if ts is None:
        return "never"
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))
