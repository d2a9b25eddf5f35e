"""The node's command handler: commands and model chunks in, acks and captures out.

Runs on the main thread and never blocks it: messages arrive as calls from the loop, slow
work (installing, loading) goes to the :class:`~edge_node.lifecycle.switcher.Switcher`'s worker, and
timeouts are checked on :meth:`Control.tick` with the loop's clock. Every method returns the
messages to queue, in order, so the loop stays the only one that touches the outbox.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Protocol

from edge_node.delivery.outgoing import Outgoing, Sequencer, capture_messages, scored_messages
from edge_node.lifecycle.capture import CaptureRing, NextCapture, Segment
from edge_node.lifecycle.commands import (
    AckDraft,
    CommandBook,
    NodeView,
    command_type,
    decide,
    draft,
)
from edge_node.lifecycle.deployer import Assembly, AssemblyError, ChunkOutcome, Spec
from edge_node.lifecycle.ledger import Ledger, LedgerError
from edge_node.lifecycle.model_store import StoreError
from edge_node.lifecycle.shadowing import Shadowing
from edge_node.lifecycle.switcher import Switched, Switcher
from edge_node.lifecycle.trust import Trust
from edge_node.scoring.pipeline import RolledBack, Scored
from edge_node.sources.base import Block
from schemas.codec import DecodeError, decode
from schemas.commands import CHUNKS, NEED, READINGS, UPTIME_S
from schemas.messages import (
    AckStatus,
    Capabilities,
    Command,
    Deploy,
    ModelChunk,
    ModelRef,
    Ping,
    Retrain,
    Rollback,
    Shadow,
    StopShadow,
)
from schemas.topics import ROOT, Kind, model_chunk_topic, node_topic

log = logging.getLogger(__name__)

MODELS_PREFIX = f"{ROOT}/models/"


class Subscriber(Protocol):
    """The part of the MQTT port that subscribes (edge_node.delivery.transport.NodeTransport)."""

    def subscribe(self, topic: str) -> None: ...

    def unsubscribe(self, topic: str) -> None: ...


@dataclass(frozen=True)
class ControlSettings:
    node: str
    channels: list[str]  # the source's channels, in its order
    capabilities: Capabilities | None = None  # for the fit check of deploys
    chunk_timeout_s: float = 5.0
    chunk_retries: int = 5
    capture_buffer: int = 20_000
    shadow_report_s: float = 60.0  # a shadow run reports this often (the drift interval)


@dataclass
class _Transfer:
    command: Deploy | Shadow
    assembly: Assembly
    topic: str


def chunk_filter(ref: ModelRef) -> str:
    """``edgeml/v1/models/{name}/{version}/+``: every chunk of one model."""
    return model_chunk_topic(ref.name, ref.version, 0).rsplit("/", 1)[0] + "/+"


class Control:
    """Decides on commands, runs them, and acknowledges every one."""

    def __init__(
        self,
        settings: ControlSettings,
        *,
        seq: Sequencer,
        switcher: Switcher,
        subscriber: Subscriber,
        ledger: Ledger,
        started: float,
        trust: Trust | None = None,
    ) -> None:
        self.settings = settings
        self.errors: Counter[str] = Counter()
        self.rollbacks = 0  # models rolled back by probation since boot
        self.cmd_topic = node_topic(settings.node, Kind.CMD)
        self._seq = seq
        self._switcher = switcher
        self._subscriber = subscriber
        self._ledger = ledger
        self._book: CommandBook = ledger.load()
        self._trust = trust  # None: unsigned commands are applied (no hub key configured)
        self._started = started
        self._ring = CaptureRing(settings.capture_buffer, len(settings.channels))
        self._transfer: _Transfer | None = None
        self._capture: NextCapture | None = None
        self._shadowing = Shadowing(seq, switcher.pipeline, settings.shadow_report_s)
        self._local: dict[str, Deploy] = {}  # deploys loading a version already installed

    # -- entry points from the loop --------------------------------------------------------

    def start(self, wall: float) -> list[Outgoing]:
        """Fail what a restart interrupted (its state died with the old process)."""
        out: list[Outgoing] = []
        for last in self._book.unfinished():
            if last.command_type in ("deploy", "shadow") and last.model is not None:
                self._subscriber.unsubscribe(chunk_filter(last.model))
            reason = f"interrupted: the node restarted (boot {self._seq.boot}) before it finished"
            failed = AckDraft(
                command=last.command, command_type=last.command_type, status="failed", reason=reason
            )
            out.append(self._ack(failed, wall))
        return out

    def on_message(self, topic: str, payload: bytes, now: float, wall: float) -> list[Outgoing]:
        """A message from the broker: a command, a model chunk, or something unexpected."""
        if topic == self.cmd_topic:
            return self._on_command(topic, payload, now, wall)
        if topic.startswith(MODELS_PREFIX):
            return self._on_chunk(topic, payload, now, wall)
        self.errors["unexpected_message"] += 1
        log.warning("message on %s ignored: not a topic this node reads", topic)
        return []

    def tick(self, now: float, wall: float) -> list[Outgoing]:
        """Chunk timeouts and finished loads."""
        out: list[Outgoing] = []
        transfer = self._transfer
        if transfer is not None:
            out += self._tick_transfer(transfer, now, wall)
        switched = self._switcher.poll(now)
        if switched is not None:
            out += self._switched(switched, now, wall)
        out += self._shadowing.tick(now, wall)
        return out

    def observe(self, block: Block, scored: Scored, wall: float) -> list[Outgoing]:
        """A block was scored: keep its readings for retrain, act on the probation verdict."""
        out: list[Outgoing] = []
        self._ring.add(block.t0, block.period, block.values)
        capture = self._capture
        if capture is not None and capture.add(block.t0, block.period, block.values):
            self._capture = None
            out += self._upload(capture.command, capture.segments, wall)
        if scored.rolled_back is not None:
            out.append(self._rolled_back(scored.rolled_back, wall))
        if scored.passed:
            log.info("model %s passed probation", self._switcher.pipeline.scorer.ref)
            self._switcher.passed(scored.passed)
        return out

    def _rolled_back(self, rolled: RolledBack, wall: float) -> Outgoing:
        """Probation failed: put the store back and fail the command that switched."""
        self.rollbacks += 1
        self.errors["rollback"] += 1
        log.error("model %s failed on probation: %s", rolled.failed, rolled.reason)
        self._switcher.undo(rolled)
        last = self._book.last(rolled.tag)
        restored = f"{rolled.restored.name}@{rolled.restored.version}"
        failed = AckDraft(
            command=rolled.tag,
            command_type=last.command_type if last else "deploy",
            status="failed",
            reason=f"rolled back to {restored}: {rolled.reason}",
            model=rolled.failed,  # the model the command was about, as its other acks name
        )
        return self._ack(failed, wall)

    def close(self) -> None:
        """Stop the worker (a load in progress is abandoned)."""
        self._switcher.close()

    # -- commands --------------------------------------------------------------------------

    def _on_command(self, topic: str, payload: bytes, now: float, wall: float) -> list[Outgoing]:
        try:
            command: Command = decode("cmd", payload, topic)
        except DecodeError as exc:
            # Without a readable id there is nobody to acknowledge: count and log.
            self.errors["bad_command"] += 1
            log.warning("%s (reason %s)", exc, exc.reason)
            return []
        refused = self._refusal(command, wall)
        if refused:
            return [self._ack(draft(command, "rejected", refused), wall, record=False)]
        settled = decide(command, self._view(), self._book, wall)
        if settled is not None:
            duplicate = self._book.last(command.id) is not None
            return [self._ack(settled, wall, record=not duplicate)]
        log.info("command %s: %s", command.id, type(command).__name__.lower())
        match command:
            case Deploy():
                return self._begin_deploy(command, now, wall)
            case Rollback():
                try:
                    target = self._switcher.rollback(command.id, command.to)
                except StoreError as exc:
                    return [self._ack(draft(command, "failed", str(exc)), wall)]
                return [self._ack(draft(command, "accepted", model=target), wall)]
            case Retrain():
                return self._retrain(command, wall)
            case Ping():
                detail = {UPTIME_S: f"{now - self._started:.1f}", "boot": self._seq.boot}
                model = self._switcher.pipeline.scorer.ref
                return [self._ack(draft(command, "applied", model=model, detail=detail), wall)]
            case Shadow():
                return self._begin_shadow(command, now, wall)
            case StopShadow():
                return self._stop_shadow(command, now, wall)

    def _refusal(self, command: Command, wall: float) -> str:
        """Why a command is not trusted ("" if it is). A known id is answered from the book
        as before; a refusal is not recorded, so a forgery cannot claim a real command's id."""
        if self._trust is None or self._book.last(command.id) is not None:
            return ""
        refused = self._trust.admit(command, wall)
        if refused:
            self.errors["untrusted_command"] += 1
            log.warning("command %s refused: %s", command.id, refused)
        return refused

    def _view(self) -> NodeView:
        scorer = self._switcher.pipeline.scorer
        transfer = self._transfer
        busy = self._switcher.busy
        if transfer is not None:
            busy = f"{command_type(transfer.command)} {transfer.command.id}"
        return NodeView(
            node=self.settings.node,
            channels=self.settings.channels,
            capabilities=self.settings.capabilities,
            active=scorer.ref,
            active_sha256=scorer.manifest.sha256,
            previous=self._switcher.previous(),
            model_busy=busy,
            capture_busy=f"retrain {self._capture.command}" if self._capture else "",
            capture_capacity=self.settings.capture_buffer,
            buffered=len(self._ring),
            active_needs=scorer.manifest.needs,
            shadowing=self._shadowing.busy,
        )

    def _ack(self, ack: AckDraft, wall: float, record: bool = True) -> Outgoing:
        """The ack as a message; remembered (on disk too) as the last word on its command."""
        if record:
            self._book.record(ack)
            try:
                self._ledger.save(self._book)
            except LedgerError as exc:
                self.errors["ledger_write"] += 1
                log.error("%s", exc)
        log.info("ack %s %s %s %s", ack.command_type, ack.command, ack.status, ack.reason)
        return Kind.ACK, ack.stamped(**self._seq.take(wall))

    # -- deploy ----------------------------------------------------------------------------

    def _begin_deploy(self, command: Deploy, now: float, wall: float) -> list[Outgoing]:
        out: list[Outgoing] = []
        manifest = command.manifest
        if self._shadowing.candidate == ModelRef(manifest.name, manifest.version):
            reason = f"deploy {command.id} of the candidate"
            out += self._end_shadow(reason, now, wall)
        if self._switcher.installed(manifest):  # a shadow run fetched it already
            self._local[command.id] = command
            self._switcher.deploy_installed(command.id, manifest)
            detail = {NEED: ""}
            ref = ModelRef(manifest.name, manifest.version)
            return [*out, self._ack(draft(command, "accepted", model=ref, detail=detail), wall)]
        return out + self._begin_transfer(command, now, wall)

    def _begin_transfer(self, command: Deploy | Shadow, now: float, wall: float) -> list[Outgoing]:
        manifest = command.manifest
        ref = ModelRef(manifest.name, manifest.version)
        spec = Spec(ref, command.size, command.chunks, manifest.sha256)
        s = self.settings
        assembly = Assembly(spec, now=now, timeout_s=s.chunk_timeout_s, retries=s.chunk_retries)
        transfer = _Transfer(command, assembly, chunk_filter(ref))
        self._transfer = transfer
        # Subscribe before the ack leaves, so no chunk sent in answer to it can be missed.
        self._subscriber.subscribe(transfer.topic)
        return [self._need(transfer, wall)]

    def _need(self, transfer: _Transfer, wall: float) -> Outgoing:
        ref = transfer.assembly.spec.model
        detail = {NEED: transfer.assembly.need_text()}
        return self._ack(draft(transfer.command, "accepted", model=ref, detail=detail), wall)

    def _on_chunk(self, topic: str, payload: bytes, now: float, wall: float) -> list[Outgoing]:
        try:
            chunk: ModelChunk = decode("model_chunk", payload, topic)
        except DecodeError as exc:
            self.errors["bad_chunk"] += 1
            log.warning("%s (reason %s)", exc, exc.reason)
            return []
        transfer = self._transfer
        if transfer is None:
            log.debug("chunk %d of %s ignored: no deploy wants it", chunk.index, chunk.model)
            return []
        outcome = transfer.assembly.add(chunk, now)
        if outcome is ChunkOutcome.INVALID:
            self.errors["bad_chunk"] += 1
            log.warning(
                "chunk %d/%d on %s does not fit the deploy", chunk.index, chunk.chunks, topic
            )
        if not transfer.assembly.complete:
            return []
        return self._assembled(transfer, wall)

    def _tick_transfer(self, transfer: _Transfer, now: float, wall: float) -> list[Outgoing]:
        try:
            ask = transfer.assembly.tick(now)
        except AssemblyError as exc:
            return self._fail_transfer(transfer, wall, str(exc))
        if ask is None:
            return []
        log.info("%s: asking again for chunks %s", transfer.command.id, ask.need)
        return [self._need(transfer, wall)]

    def _assembled(self, transfer: _Transfer, wall: float) -> list[Outgoing]:
        try:
            artifact = transfer.assembly.artifact()
        except AssemblyError as exc:
            return self._fail_transfer(transfer, wall, str(exc))
        self._stop_transfer(transfer)
        command = transfer.command
        if isinstance(command, Shadow):
            self._switcher.stage(command.id, command.manifest, artifact)
        else:
            self._switcher.deploy(command.id, command.manifest, artifact)
        return []

    def _stop_transfer(self, transfer: _Transfer) -> None:
        self._transfer = None
        self._subscriber.unsubscribe(transfer.topic)

    def _fail_transfer(self, transfer: _Transfer, wall: float, error: str) -> list[Outgoing]:
        self._stop_transfer(transfer)
        ref = transfer.assembly.spec.model
        out = [self._ack(draft(transfer.command, "failed", error, model=ref), wall)]
        if isinstance(transfer.command, Shadow):
            out += self._shadowing.fail(transfer.command, error, wall)
        return out

    def _switched(self, switched: Switched, now: float, wall: float) -> list[Outgoing]:
        if switched.command_type == "shadow":
            return self._shadow_loaded(switched, now, wall)
        local = self._local.pop(switched.command, None)
        if local is not None and switched.error:
            # The installed copy would not load (damaged on disk?): fetch it after all.
            log.warning(
                "deploy %s: installed copy failed (%s); fetching it", local.id, switched.error
            )
            return self._begin_transfer(local, now, wall)
        out = scored_messages(self._seq, switched.scored, wall)
        status: AckStatus = "applied" if not switched.error else "failed"
        ack = AckDraft(
            command=switched.command,
            command_type=switched.command_type,
            status=status,
            reason=switched.error,
            model=switched.model,
        )
        out.append(self._ack(ack, wall))
        return out

    # -- shadow runs -----------------------------------------------------------------------

    def _begin_shadow(self, command: Shadow, now: float, wall: float) -> list[Outgoing]:
        """Fetch the candidate like a deploy (a running run ends first: it is replaced)."""
        out = self._end_shadow(f"replaced by shadow {command.id}", now, wall)
        self._shadowing.begin(command)
        return out + self._begin_transfer(command, now, wall)

    def _stop_shadow(self, command: StopShadow, now: float, wall: float) -> list[Outgoing]:
        out: list[Outgoing] = []
        pending = self._shadowing.pending
        reason = f"stopped by {command.id}"
        if pending is not None:  # still fetching or loading: it never starts
            transfer = self._transfer
            if transfer is not None and transfer.command is pending:
                self._stop_transfer(transfer)
            ref = ModelRef(pending.manifest.name, pending.manifest.version)
            early = f"{reason} before it started"
            out.append(self._ack(draft(pending, "failed", early, model=ref), wall))
            out += self._shadowing.fail(pending, early, wall, state="stopped")
        out += self._end_shadow(reason, now, wall)
        out.append(self._ack(draft(command, "applied"), wall))
        return out

    def _end_shadow(self, reason: str, now: float, wall: float) -> list[Outgoing]:
        return self._shadowing.end("stopped", reason, now, wall)

    def _shadow_loaded(self, switched: Switched, now: float, wall: float) -> list[Outgoing]:
        """The worker is done with a candidate: start its run, or fail the command."""
        pending = self._shadowing.pending
        if pending is None or pending.id != switched.command:
            log.info("shadow %s: its candidate loaded after the run was stopped", switched.command)
            return []
        error = switched.error
        if not error and switched.loaded is not None:
            error = self._shadowing.start(pending.id, switched.loaded, now, wall)
        if error:
            self.errors["shadow_failed"] += 1
            failed = draft(pending, "failed", error, model=switched.model)
            return [self._ack(failed, wall), *self._shadowing.fail(pending, error, wall)]
        return [self._ack(draft(pending, "applied", model=switched.model), wall)]

    # -- retrain ---------------------------------------------------------------------------

    def _retrain(self, command: Retrain, wall: float) -> list[Outgoing]:
        if command.mode == "last":
            return self._upload(command.id, self._ring.last(command.readings), wall)
        self._capture = NextCapture(command.id, command.readings, len(self.settings.channels))
        detail = {READINGS: str(command.readings)}
        return [self._ack(draft(command, "accepted", detail=detail), wall)]

    def _upload(self, command_id: str, segments: list[Segment], wall: float) -> list[Outgoing]:
        """Capture messages of ``segments``, then the applied ack of the retrain command."""
        out = capture_messages(self._seq, command_id, self.settings.channels, segments, wall)
        readings = sum(segment.n for segment in segments)
        detail = {READINGS: str(readings), CHUNKS: str(len(out))}
        ack = AckDraft(command=command_id, command_type="retrain", status="applied", detail=detail)
        out.append(self._ack(ack, wall))
        return out
