"""Promotion of an approved candidate behind a small port, and its default: deploy and bake.

:class:`Promoter` is what the loop needs: ``promote(node, model, version)`` and a status query.
The default, :class:`DeployPromoter`, deploys the candidate to the node (a signed deploy on
serve's transport, chunks from serve's chunk server), waits for ``applied``, then watches the
node's flag rate for ``bake_s``: worse than before the switch by more than the tolerance, it
rolls the node back to the version it had and reports ``rolled_back``. (The rollout engine's
gate holds a new model to the old one's score distribution, which a candidate that ends a
drifted node's false alarms is meant to leave: docs/ARCHITECTURE.md, "Drift -> retrain loop".)

Its state is in memory: a hub restart during a promotion reports it ``failed`` with a note
to check the node, rather than guess what the node runs.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Protocol

from cloud_hub.commands.commander import build_deploy, build_rollback, new_command_id
from cloud_hub.commands.sender import CommandSender, SendError
from cloud_hub.models.catalog import Catalog, CatalogError
from cloud_hub.retraining.compare import Counts, bake_verdict, flag_rate
from cloud_hub.retraining.policy import PromotionState
from schemas.commands import DEFAULT_CHUNK_SIZE
from schemas.messages import Ack

log = logging.getLogger(__name__)

_UNKNOWN: Final = "unknown promotion (the hub restarted during it?): check the node's model"


@dataclass(frozen=True, slots=True)
class PromotionStatus:
    """Where a promotion is, in words, with what it measured."""

    state: PromotionState
    note: str = ""
    figures: dict[str, float] | None = None


class Promoter(Protocol):
    """Puts a registered candidate into service on one node and says how it went."""

    def promote(self, node: str, model: str, version: str, now: float) -> str:
        """Start; returns a handle for :meth:`status`."""
        ...

    def status(self, handle: str, now: float) -> PromotionStatus:
        """Where the promotion ``handle`` is now."""
        ...


@dataclass
class _Run:
    node: str
    model: str
    version: str
    previous: str
    deploy: str
    sent_at: float
    before: Counts | None
    promoted_at: Counts | None
    state: PromotionState = "promoting"
    note: str = "deploy sent"
    applied_at: float | None = None
    start: Counts | None = None
    rollback: str = ""
    figures: dict[str, float] | None = None


class DeployPromoter:
    """The default promoter: deploy, bake, roll back if worse (see the module doc)."""

    def __init__(
        self,
        sender: CommandSender,
        catalog: Catalog,
        counts: Callable[[str], tuple[Counts, str] | None],
        baseline: Callable[[str], Counts | None],
        *,
        bake_s: float,
        tolerance: float,
        timeout_s: float,
    ) -> None:
        self._sender = sender
        self._catalog = catalog
        self._counts = counts
        self._baseline = baseline
        self._bake_s = bake_s
        self._tolerance = tolerance
        self._timeout_s = timeout_s
        self._runs: dict[str, _Run] = {}
        self._by_command: dict[str, str] = {}

    def promote(self, node: str, model: str, version: str, now: float) -> str:
        """Deploy ``model@version`` to ``node``; SendError or CatalogError if it cannot go."""
        entry = self._catalog.get(model, version)
        if entry is None:
            raise CatalogError(f"{model}@{version} is not in the catalog")
        seen = self._counts(node)
        previous = seen[1] if seen is not None else ""
        command = self._sender.send(
            lambda issue: build_deploy(
                issue,
                node,
                manifest=entry.manifest,
                size=entry.size,
                chunk_size=DEFAULT_CHUNK_SIZE,
                command_id=new_command_id(),
            ),
            now,
            self._timeout_s,
            f"promote {model}@{version}",
        )
        handle = secrets.token_hex(4)
        self._runs[handle] = _Run(
            node,
            model,
            version,
            previous,
            command.id,
            now,
            before=self._baseline(node),
            promoted_at=seen[0] if seen is not None else None,
        )
        self._by_command[command.id] = handle
        return handle

    def on_ack(self, ack: Ack, now: float) -> int:
        """Follow the acks of this promoter's deploys and rollbacks (an AckConsumer)."""
        handle = self._by_command.get(ack.command)
        run = self._runs.get(handle) if handle is not None else None
        if run is None or ack.node != run.node:
            return 0
        if ack.command == run.rollback:
            if ack.status == "applied":
                run.state, run.note = "rolled_back", f"{run.note}; rolled back to {run.previous}"
            elif ack.status in ("rejected", "failed"):
                run.state, run.note = "failed", f"{run.note}; rollback {ack.status}: {ack.reason}"
            return 1
        if ack.status == "applied" and run.state == "promoting":
            seen = self._counts(run.node)
            run.state, run.applied_at = "baking", now
            run.start = seen[0] if seen is not None else None
            run.note = f"applied; baking {self._bake_s:g} s"
        elif ack.status in ("rejected", "failed"):
            # A failed after applied is the node's probation rolling the model back.
            run.state, run.note = "failed", f"deploy {ack.status}: {ack.reason}"
        return 1

    def status(self, handle: str, now: float) -> PromotionStatus:
        """Where the promotion is; ends the bake (and rolls back) when its time has come."""
        run = self._runs.get(handle)
        if run is None:
            return PromotionStatus("failed", _UNKNOWN)
        if run.state == "promoting" and now - run.sent_at > self._timeout_s:
            what = "rollback" if run.rollback else "deploy"
            run.state = "failed"
            run.note = f"{run.note}; no answer to the {what} in {self._timeout_s:g} s"
        elif run.state == "baking" and now - _or(run.applied_at, now) >= self._bake_s:
            self._judge(handle, run, now)
        return PromotionStatus(run.state, run.note, run.figures)

    def _judge(self, handle: str, run: _Run, now: float) -> None:
        seen = self._counts(run.node)
        before = (
            flag_rate(run.before, run.promoted_at)
            if run.before is not None and run.promoted_at is not None
            else None
        )
        after = flag_rate(run.start, seen[0]) if run.start is not None and seen else None
        ok, text = bake_verdict(before, after, self._tolerance)
        run.figures = {
            k: v for k, v in (("rate_before", before), ("rate_after", after)) if v is not None
        }
        if ok:
            run.state, run.note = "promoted", text
            return
        run.note = text
        back_to = run.previous or None
        try:
            command = self._sender.send(
                lambda issue: build_rollback(issue, run.node, new_command_id(), back_to),
                now,
                self._timeout_s,
                f"bake of {run.model}@{run.version} failed",
            )
        except SendError as exc:
            run.state, run.note = "failed", f"{text}; rollback not sent: {exc}"
            return
        run.rollback, run.sent_at = command.id, now
        self._by_command[command.id] = handle
        run.state = "promoting"  # until the rollback's ack: status says rolled_back then


def _or(value: float | None, default: float) -> float:
    return default if value is None else value
