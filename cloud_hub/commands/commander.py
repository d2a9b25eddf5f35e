"""The CLI's commands, pure: build them, follow each node's acks, say how it went.

Time comes in as arguments; nothing here touches the broker, a file or a clock. A node's
answer moves through ``sent -> accepted -> applied | rejected | failed``; ``applied`` may
still turn into ``failed`` when the node rolls a freshly switched model back. Whatever has not
ended by the deadline is ``timeout``.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from cloud_hub.commands.identity import HubIdentity
from schemas.commands import DUPLICATE, NEED, UPTIME_S, parse_ranges
from schemas.manifest import Manifest
from schemas.messages import (
    Ack,
    Command,
    Deploy,
    ModelRef,
    Ping,
    Retrain,
    Rollback,
    Shadow,
    StopShadow,
)

EXIT_OK: Final = 0
EXIT_FAILED: Final = 1
EXIT_USAGE: Final = 2
# An accepted deploy with no chunk on the wire after this long means nobody serves chunks.
NO_CHUNKS_AFTER_S: Final = 10.0
DEFAULT_EXPIRES_IN_S: Final = 600.0
# A node answers "applied" when it switches, then keeps the old model through a probation of
# the new one's first runs and answers "failed" if it rolls back. It sends nothing when the
# probation passes, so a deploy listens this long after "applied" before it calls it a success.
DEFAULT_SETTLE_S: Final = 5.0

State = Literal["sent", "accepted", "applied", "rejected", "failed", "timeout"]
ENDED: Final = frozenset({"applied", "rejected", "failed", "timeout"})
_NO_CHUNKS: Final = "no chunks were published: is cloud-hub serve running?"


def new_command_id() -> str:
    """A short random command id (48 bits: collisions are not a practical concern)."""
    return secrets.token_hex(6)


@dataclass(frozen=True)
class Issue:
    """Who issues commands, when, and for how long they stay valid."""

    identity: HubIdentity
    now: float
    expires_in: float = DEFAULT_EXPIRES_IN_S

    def fields(self, node: str, command_id: str) -> dict[str, Any]:
        """Envelope and expiry fields of one command to ``node``."""
        return {
            "node": node,
            "boot": self.identity.boot,
            "seq": self.identity.next_seq(),
            "ts": self.now,
            "id": command_id,
            "issued_at": self.now,
            "expires_at": self.now + self.expires_in,
        }


def build_deploy(
    issue: Issue, node: str, *, manifest: Manifest, size: int, chunk_size: int, command_id: str
) -> Deploy:
    """A deploy of the artifact described by ``manifest`` (``size`` bytes) to ``node``."""
    chunks = max(1, -(-size // chunk_size))
    return Deploy(
        **issue.fields(node, command_id),
        manifest=manifest,
        size=size,
        chunk_size=chunk_size,
        chunks=chunks,
    )


def build_shadow(
    issue: Issue,
    node: str,
    *,
    manifest: Manifest,
    size: int,
    chunk_size: int,
    command_id: str,
    duration_s: float,
    cpu_budget: float,
) -> Shadow:
    """A shadow run on ``node`` of the artifact described by ``manifest``, beside its model."""
    return Shadow(
        **issue.fields(node, command_id),
        manifest=manifest,
        size=size,
        chunk_size=chunk_size,
        chunks=max(1, -(-size // chunk_size)),
        duration_s=duration_s,
        cpu_budget=cpu_budget,
    )


def build_stop_shadow(issue: Issue, node: str, command_id: str) -> StopShadow:
    """End ``node``'s shadow run now."""
    return StopShadow(**issue.fields(node, command_id))


def build_rollback(issue: Issue, node: str, command_id: str, to: str | None = None) -> Rollback:
    """Go one step back in ``node``'s model history, or to version ``to`` of its model."""
    return Rollback(**issue.fields(node, command_id), to=to)


def build_ping(issue: Issue, node: str, command_id: str) -> Ping:
    """Ask ``node`` for its active model and uptime."""
    return Ping(**issue.fields(node, command_id))


def build_retrain(
    issue: Issue, node: str, *, readings: int, mode: Literal["next", "last"], command_id: str
) -> Retrain:
    """Ask ``node`` to capture and upload ``readings`` readings."""
    return Retrain(**issue.fields(node, command_id), readings=readings, mode=mode)


@dataclass
class NodeProgress:
    """What one node has answered to its command so far."""

    node: str
    command: Command
    sent_at: float
    state: State = "sent"
    reason: str = ""
    model: ModelRef | None = None
    detail: dict[str, str] = field(default_factory=dict)
    answered_at: float | None = None
    accepted_at: float | None = None
    wanted: set[int] = field(default_factory=set)
    repeated: bool = False

    @property
    def ended(self) -> bool:
        """True once nothing more is expected (or waited for)."""
        return self.state in ENDED


class Tracker:
    """Follows the acks of one command per node until all have ended or time is up."""

    def __init__(
        self, commands: Sequence[Command], now: float, timeout: float, settle: float = 0.0
    ) -> None:
        self.started = now
        self.deadline = now + timeout
        self.timeout = timeout
        self.settle = settle
        self.nodes = {c.node: NodeProgress(c.node, c, now) for c in commands}
        self.chunks_seen: set[int] = set()

    def on_ack(self, ack: Ack, now: float) -> NodeProgress | None:
        """Apply an ack; the node's progress if it changed, None if unrelated or too late."""
        p = self.nodes.get(ack.node)
        if p is None or ack.command != p.command.id or not _may_move(p.state, ack.status):
            return None
        p.repeated = p.repeated or ack.detail.get(DUPLICATE) == "true"
        p.state = ack.status
        p.reason = ack.reason
        p.model = ack.model or p.model
        p.detail = dict(ack.detail)
        p.answered_at = now
        if ack.status == "accepted":
            p.accepted_at = p.accepted_at if p.accepted_at is not None else now
            p.wanted |= _need(ack, p.command)
        return p

    def on_chunk(self, index: int) -> None:
        """A chunk of the deployed model went past on the models topic."""
        self.chunks_seen.add(index)

    def done(self, now: float) -> bool:
        """True when every node has ended (and settled) or the deadline has passed."""
        if now >= self.deadline:
            return True
        if not all(p.ended for p in self.nodes.values()):
            return False
        applied = [p.answered_at or now for p in self.nodes.values() if p.state == "applied"]
        return not applied or now >= max(applied) + self.settle

    def finish(self) -> None:
        """Mark every node that has not ended as timed out."""
        for p in self.nodes.values():
            if not p.ended:
                p.reason = _waiting_for(p)
                p.state = "timeout"

    def exit_code(self) -> int:
        """0 when every node applied its command, else 1."""
        ok = all(p.state == "applied" for p in self.nodes.values())
        return EXIT_OK if ok else EXIT_FAILED

    def chunks_missing(self, now: float) -> bool:
        """True when a node has waited for chunks a while and none at all went past."""
        return not self.chunks_seen and any(
            p.state == "accepted"
            and p.wanted
            and p.accepted_at is not None
            and now - p.accepted_at >= NO_CHUNKS_AFTER_S
            for p in self.nodes.values()
        )

    def progress(self) -> str:
        """One line: each node's state (chunk counts while a deploy downloads)."""
        return ", ".join(f"{p.node} {self._short(p)}" for p in self.nodes.values())

    def _short(self, p: NodeProgress) -> str:
        if p.state == "sent":
            return "waiting"
        if p.state == "accepted" and p.wanted:
            return f"{len(p.wanted & self.chunks_seen)}/{len(p.wanted)} chunks"
        return p.state

    def report(self) -> list[str]:
        """One line per node: node, outcome, then the model and time or the reason."""
        width = max((len(n) for n in self.nodes), default=0)
        return [f"{p.node:<{width}}  {p.state:<8}  {self._outcome(p)}" for p in self.nodes.values()]

    def _outcome(self, p: NodeProgress) -> str:
        if p.state == "timeout":
            return self._timeout_text(p)
        if p.state != "applied":
            return p.reason or "no reason given"
        parts = [_ref(p.model), f"{(p.answered_at or p.sent_at) - p.sent_at:.2f} s"]
        if UPTIME_S in p.detail:
            parts.append(f"up {p.detail[UPTIME_S]} s")
        if p.repeated:
            parts.append("(answered before: the node had seen this command)")
        return "   ".join(parts)

    def _timeout_text(self, p: NodeProgress) -> str:
        text = f"{p.reason} within {self.timeout:g} s"
        if p.wanted and not self.chunks_seen:
            text += f"; {_NO_CHUNKS}"
        elif p.wanted:
            text += f" ({len(p.wanted & self.chunks_seen)}/{len(p.wanted)} chunks went out)"
        return text


def no_chunks_warning() -> str:
    """What to tell the user when a deploy gets no chunks."""
    return _NO_CHUNKS


def _may_move(state: State, status: str) -> bool:
    if state in ("sent", "accepted"):
        return True
    # A model that misbehaves right after the switch is rolled back: applied, then failed.
    return state == "applied" and status == "failed"


def _need(ack: Ack, command: Command) -> set[int]:
    text = ack.detail.get(NEED)
    if text is None:
        return set()
    limit = command.chunks if isinstance(command, Deploy) else 1 << 31
    try:
        return set(parse_ranges(text, limit))
    except ValueError:
        return set()  # the hub refuses it too; the node's next ack says more


def _waiting_for(p: NodeProgress) -> str:
    if p.state == "sent":
        return "no answer"
    return "accepted, no result"


def _ref(model: ModelRef | None) -> str:
    return f"{model.name}@{model.version}" if model is not None else "-"
