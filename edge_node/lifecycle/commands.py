"""What to do with a command, decided from the command, the node's state and the time (pure).

The node answers every command with acks (schemas/commands.py). This module holds the part that
needs no I/O: the book of the last acks by command id (so a repeated id is answered, not
re-applied, even after a restart) and the checks that settle a command without running it.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from datetime import UTC, datetime

import msgspec

from schemas.commands import DUPLICATE
from schemas.fit import Needs, check, verdict
from schemas.messages import (
    Ack,
    AckStatus,
    Capabilities,
    Command,
    Deploy,
    ModelRef,
    Ping,
    Retrain,
    Rollback,
    Shadow,
    StopShadow,
)
from schemas.topics import TopicError, check_id

BOOK_CAPACITY = 256
FINAL: frozenset[str] = frozenset({"applied", "rejected", "failed"})


class AckDraft(msgspec.Struct, frozen=True, kw_only=True):
    """An ack without its envelope: what the node last said about one command."""

    command: str
    command_type: str
    status: AckStatus
    reason: str = ""
    model: ModelRef | None = None
    detail: dict[str, str] = {}

    def stamped(self, node: str, boot: str, seq: int, ts: float) -> Ack:
        """The ack as a protocol message with its envelope."""
        return Ack(
            node=node,
            boot=boot,
            seq=seq,
            ts=ts,
            command=self.command,
            command_type=self.command_type,
            status=self.status,
            reason=self.reason,
            model=self.model,
            detail=dict(self.detail),
        )


def command_type(command: Command) -> str:
    """The command's tag, as acks name it ("deploy", "rollback", "retrain", "ping")."""
    return str(type(command).__struct_config__.tag)


def draft(
    command: Command,
    status: AckStatus,
    reason: str = "",
    *,
    model: ModelRef | None = None,
    detail: dict[str, str] | None = None,
) -> AckDraft:
    """An ack draft for ``command``."""
    return AckDraft(
        command=command.id,
        command_type=command_type(command),
        status=status,
        reason=reason,
        model=model,
        detail=detail or {},
    )


class CommandBook:
    """The last ack of each of the last ``capacity`` command ids, oldest forgotten first.

    Commands expire, so a bounded memory is enough to make them idempotent: an id older than
    the book's horizon would in practice also be long expired.
    """

    def __init__(self, capacity: int = BOOK_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"book capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._last: OrderedDict[str, AckDraft] = OrderedDict()

    def __len__(self) -> int:
        return len(self._last)

    def last(self, command_id: str) -> AckDraft | None:
        """The last ack sent for ``command_id``, if the book still remembers it."""
        return self._last.get(command_id)

    def record(self, ack: AckDraft) -> None:
        """Remember ``ack`` as the last word on its command."""
        self._last[ack.command] = ack
        self._last.move_to_end(ack.command)
        while len(self._last) > self.capacity:
            self._last.popitem(last=False)

    def unfinished(self) -> list[AckDraft]:
        """Commands whose last ack was not final (a restart interrupted them)."""
        return [a for a in self._last.values() if a.status not in FINAL]

    def to_json(self) -> bytes:
        """The book as JSON, oldest entry first."""
        return msgspec.json.encode(list(self._last.values()))

    @classmethod
    def from_json(cls, data: bytes, source: str, capacity: int = BOOK_CAPACITY) -> CommandBook:
        """Inverse of :meth:`to_json`; ValueError names ``source`` and the bad field."""
        try:
            entries = msgspec.json.decode(data, type=list[AckDraft])
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise ValueError(f"{source}: invalid command book: {exc}") from None
        book = cls(capacity)
        for entry in entries:
            book.record(entry)
        return book


@dataclass(frozen=True)
class NodeView:
    """What the checks need to know about the node right now."""

    node: str
    channels: list[str]  # the source's channels
    capabilities: Capabilities | None  # what the node announced at birth
    active: ModelRef
    active_sha256: str
    previous: ModelRef | None
    model_busy: str  # "deploy <id>" while a model operation runs, else ""
    capture_busy: str  # "retrain <id>" while a "next" capture runs, else ""
    capture_capacity: int
    buffered: int  # readings in the capture buffer
    active_needs: Needs | None = None  # the active model's, added to a shadow candidate's
    shadowing: str = ""  # "shadow <id>" while a shadow run fetches, loads or runs, else ""


def decide(command: Command, view: NodeView, book: CommandBook, now: float) -> AckDraft | None:
    """The ack that settles ``command`` without running it, or None when it must run.

    Order matters: a repeated id is answered with its last ack even if it has expired since,
    because that answer is the truth about what the node did with it.
    """
    last = book.last(command.id)
    if last is not None:
        return msgspec.structs.replace(last, detail={**last.detail, DUPLICATE: "true"})
    if command.node != view.node:
        return draft(
            command, "rejected", f"command for node {command.node!r}, this is {view.node!r}"
        )
    if command.expires_at < now:
        return draft(
            command,
            "rejected",
            f"expired: expires_at {_utc(command.expires_at)} is before the node's clock "
            f"{_utc(now)}",
        )
    match command:
        case Deploy():
            return _check_deploy(command, view)
        case Rollback():
            if view.model_busy:
                return draft(command, "rejected", f"{view.model_busy} in progress")
            if view.previous is None and command.to is None:
                return draft(command, "rejected", "no previous model")
        case Retrain():
            return _check_retrain(command, view)
        case Shadow():
            return _check_shadow(command, view)
        case StopShadow():
            if not view.shadowing:
                return draft(command, "rejected", "no shadow run in progress")
        case Ping():
            pass
    return None


def expected_chunks(size: int, chunk_size: int) -> int:
    """Chunks of an artifact of ``size`` bytes (an empty one still travels as one chunk)."""
    return max(1, -(-size // chunk_size))


def _check_deploy(command: Deploy, view: NodeView) -> AckDraft | None:
    manifest = command.manifest
    ref = ModelRef(manifest.name, manifest.version)
    refused = _check_artifact(command, view, [manifest.needs] if manifest.needs else [])
    if refused is not None:
        return refused
    if ref == view.active:
        if manifest.sha256 == view.active_sha256:
            return draft(command, "applied", "already active", model=ref)
        return draft(
            command,
            "rejected",
            f"{ref.name}@{ref.version} is active with another sha256; "
            "a changed artifact needs a new version",
        )
    return None


def _check_shadow(command: Shadow, view: NodeView) -> AckDraft | None:
    """A shadow run's candidate is checked like a deploy's model, and must fit beside the
    active model (their memory and power add up)."""
    manifest = command.manifest
    needs = [n for n in (manifest.needs, view.active_needs) if n is not None]
    refused = _check_artifact(command, view, needs if manifest.needs else [])
    if refused is not None:
        return refused
    if ModelRef(manifest.name, manifest.version) == view.active:
        return draft(command, "rejected", f"{manifest.name}@{manifest.version} is the active model")
    return None


def _check_artifact(
    command: Deploy | Shadow, view: NodeView, needs: list[Needs]
) -> AckDraft | None:
    """The checks a model to fetch must pass: the node is free, names, sensors, fit, chunks."""
    manifest = command.manifest
    if view.model_busy:
        return draft(command, "rejected", f"{view.model_busy} in progress")
    try:
        check_id(manifest.name, "model name")
        check_id(manifest.version, "model version")
    except TopicError as exc:
        return draft(command, "rejected", f"manifest: {exc}")
    missing = [c for c in manifest.input.channels if c not in view.channels]
    if missing:
        return draft(
            command,
            "rejected",
            f"manifest input channels {missing} are not among this node's sensors {view.channels}",
        )
    if needs and view.capabilities is not None:
        reasons = check(view.capabilities, needs)
        if reasons:
            beside = " beside the active model" if len(needs) > 1 else ""
            return draft(command, "rejected", f"does not fit this node{beside}: {verdict(reasons)}")
    chunks = expected_chunks(command.size, command.chunk_size)
    if command.chunks != chunks:
        return draft(
            command,
            "rejected",
            f"chunks is {command.chunks}, but size {command.size} in chunks of "
            f"{command.chunk_size} makes {chunks}",
        )
    return None


def _check_retrain(command: Retrain, view: NodeView) -> AckDraft | None:
    if command.readings > view.capture_capacity:
        return draft(
            command,
            "rejected",
            f"readings {command.readings} is above the node's capture buffer of "
            f"{view.capture_capacity} (commands.capture_buffer)",
        )
    if command.mode == "next" and view.capture_busy:
        return draft(command, "rejected", f"{view.capture_busy} in progress")
    if command.mode == "last" and view.buffered == 0:
        return draft(command, "rejected", "no readings captured yet")
    return None


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")
