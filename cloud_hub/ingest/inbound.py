"""The hub's inbound path: topic -> decode -> check -> dedupe -> fleet state; pure, no I/O.

Bad input never raises: it is counted by a bounded reason and logged at WARNING with the
topic and the decoder's message, never the payload bytes (they may be large or hostile).
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Any, Final, Literal, NamedTuple, Protocol

from cloud_hub.ingest.dedupe import Deduper
from cloud_hub.ingest.events_store import EpisodeSink
from cloud_hub.ingest.fleet import FleetState, NodeState
from schemas.codec import DecodeError, decode
from schemas.messages import (
    Ack,
    Capture,
    Drift,
    Event,
    ResultBatch,
    ShadowReport,
    Status,
    Telemetry,
)
from schemas.packing import count_flags
from schemas.topics import NODE_TO_HUB, Kind, TopicError, parse_node_topic

log = logging.getLogger(__name__)

REJECT_REASONS: Final = (
    "bad_topic",
    "malformed",
    "invalid",
    "too_deep",
    "out_of_range",
    "node_mismatch",
    "unexpected_kind",
    "implausible_seq",
    "implausible_index",
    "bad_clock",
    "internal",
)
_DECODE_REASONS: Final = frozenset({"malformed", "too_deep", "out_of_range"})


@dataclass(frozen=True, slots=True)
class Bounds:
    """How far a message may reach beyond what the hub has seen of its stream.

    A seq more than ``seq_jump`` away from the seqs seen of its boot (10 million: 11 days of
    messages dropped by a node's outbox at 10 messages/s), or readings more than
    ``reading_jump`` away from those received (10**9: 11 days at 1 kHz), are refused: either
    would otherwise add that many "missing" to the gap gauges for good. A state message
    (status, telemetry, drift: the hub keeps the newest by ``ts``) whose ``ts`` is more than
    ``clock_ahead_s`` ahead of the hub's clock, or not finite, is refused too, or it would
    stay the newest for ever. Older timestamps are accepted: boards without a real-time
    clock start in 1970, and their messages are ordered by arrival then.
    """

    seq_jump: int = 10_000_000
    reading_jump: int = 1_000_000_000
    clock_ahead_s: float = 600.0


_BY_TS: Final = (Status, Telemetry, Drift)
# The ``type`` label of a reject: a topic kind, or "unknown" when the topic did not parse.
UNKNOWN_TYPE: Final = "unknown"
MESSAGE_KINDS: Final = tuple(k.value for k in NODE_TO_HUB)

OutcomeStatus = Literal["applied", "stale", "duplicate", "rejected"]


class AckSink(Protocol):
    """Receives every new command ack (the command tracker, later)."""

    def on_ack(self, ack: Ack, now: float) -> None: ...


class CaptureSink(Protocol):
    """Receives every new chunk of captured readings (the trainer's collector, later)."""

    def on_capture(self, capture: Capture, now: float) -> None: ...


class BehaviourSink(Protocol):
    """Sees every applied message (the rollout gate's behaviour figures)."""

    def observe(self, message: object, now: float) -> None: ...


class NullSink:
    """Drops acks and captures: the default until a consumer is wired in."""

    def on_ack(self, ack: Ack, now: float) -> None:
        """Ignore ``ack``."""

    def on_capture(self, capture: Capture, now: float) -> None:
        """Ignore ``capture``."""

    def observe(self, message: object, now: float) -> None:
        """Ignore ``message``."""


class Outcome(NamedTuple):
    """What became of one inbound message (a named tuple: one is made per message)."""

    status: OutcomeStatus
    kind: str = ""
    node: str = ""
    reason: str = ""
    detail: str = ""


class Ingest:
    """Applies inbound messages to fleet state and counts what it saw."""

    def __init__(
        self,
        fleet: FleetState,
        deduper: Deduper,
        *,
        acks: AckSink | None = None,
        captures: CaptureSink | None = None,
        bounds: Bounds | None = None,
        episodes: EpisodeSink | None = None,
        behaviour: BehaviourSink | None = None,
    ) -> None:
        self.fleet = fleet
        self.deduper = deduper
        self.bounds = bounds or Bounds()
        self._acks: AckSink = acks or NullSink()
        self._captures: CaptureSink = captures or NullSink()
        self._behaviour: BehaviourSink = behaviour or NullSink()
        self.episodes = episodes or EpisodeSink()  # open episodes (metrics) and the event store
        self.messages: Counter[str] = Counter()
        self.rejects: Counter[tuple[str, str]] = Counter()
        self.acks_received = 0
        self.capture_chunks = 0
        # The node timestamp of the message applied last: now minus it is the hub's lag while
        # it works through a backlog (node clocks permitting).
        self.last_applied_ts: float | None = None
        self._profiles: set[str] = set()
        self._healths: set[str] = set()

    def take_profiles(self) -> set[str]:
        """Nodes changed since the last call beyond their live part and telemetry
        (cloud_hub.store.rows): new nodes, and those that got a status, drift report, another
        model or a batch of another boot. The store writes those whole, the others' live
        part (and telemetry, :meth:`take_healths`) only."""
        profiles, self._profiles = self._profiles, set()
        return profiles

    def take_healths(self) -> set[str]:
        """Nodes whose telemetry changed since the last call (their ``node_health`` row)."""
        healths, self._healths = self._healths, set()
        return healths

    def mark_profiles(self, profiles: set[str], healths: set[str]) -> None:
        """Report nodes again from the next ``take_profiles`` and ``take_healths`` (their
        write failed)."""
        self._profiles |= profiles
        self._healths |= healths

    @property
    def duplicates(self) -> int:
        """Redeliveries dropped so far."""
        return self.deduper.duplicates

    def handle(self, topic: str, payload: bytes, now: float) -> Outcome:
        """Decode, check, dedupe and apply one message received at ``now``."""
        try:
            parsed = parse_node_topic(topic)
        except TopicError as exc:
            return self._reject(topic, "bad_topic", UNKNOWN_TYPE, str(exc))
        kind = parsed.kind.value
        if parsed.kind not in NODE_TO_HUB:
            return self._reject(topic, "unexpected_kind", kind, f"{kind} is not sent by nodes")
        try:
            message = decode(kind, payload)
        except DecodeError as exc:
            reason = exc.reason if exc.reason in _DECODE_REASONS else "invalid"
            return self._reject(topic, reason, kind, str(exc), parsed.node)
        if message.node != parsed.node:
            detail = f"payload node {message.node!r} on the topic of {parsed.node!r}"
            return self._reject(topic, "node_mismatch", kind, detail, parsed.node)
        # One copy of a node's id and boot for every structure that keys on them (fleet,
        # dedupe, open episodes), rather than one per message kept: 10,000 nodes per hub.
        state = self.fleet.node(message.node)
        if state is not None:
            message.node, message.boot = state.shared_ids(message.boot)
        if state is None or not state.boot:
            self._profiles.add(message.node)  # new: the store has no snapshot of it yet
        refusal = self._out_of_bounds(message, now, state)
        if refusal is not None:
            if refusal[0] == "bad_clock" and parsed.kind is not Kind.STATUS:
                # Refused for good, and so confirmed: the node must not send it again forever.
                self.deduper.observe(message.node, message.boot, message.seq)
            return self._reject(topic, refusal[0], kind, refusal[1], parsed.node)
        # Status is state, not stream: its seq repeats the stream's count (see Envelope).
        is_stream = parsed.kind is not Kind.STATUS
        if is_stream and not self.deduper.observe(message.node, message.boot, message.seq):
            self.fleet.touch(message.node, message.boot, now)
            return Outcome("duplicate", kind, parsed.node)
        self.messages[kind] += 1
        self.last_applied_ts = message.ts
        applied = self._apply(message, now, state)
        self._behaviour.observe(message, now)
        return Outcome("applied" if applied else "stale", kind, parsed.node)

    def _out_of_bounds(
        self, message: Any, now: float, state: NodeState | None
    ) -> tuple[str, str] | None:
        """(reason, detail) if ``message`` reaches implausibly far; None if it is fine."""
        b = self.bounds
        if not isinstance(message, Status):
            seen = self.deduper.stream(message.node, message.boot, create=False)
            if seen is not None and message.seq in seen:
                return None  # a redelivery: dedupe drops it (and it is confirmed again)
            if seen is not None and not seen.plausible(message.seq, message.seq + 1, b.seq_jump):
                return "implausible_seq", f"seq {message.seq} is over {b.seq_jump} from those seen"
        if isinstance(message, _BY_TS) and not (message.ts <= now + b.clock_ahead_s):
            return "bad_clock", f"ts {message.ts} is over {b.clock_ahead_s:.0f} s ahead of {now}"
        if isinstance(message, ResultBatch):
            readings = state.coverage.get(message.boot) if state is not None else None
            end = message.first + message.n
            if readings is not None and not readings.plausible(message.first, end, b.reading_jump):
                return "implausible_index", (
                    f"readings [{message.first}, {end}) are over {b.reading_jump} from those seen"
                )
        return None

    def record_internal_error(self, topic: str) -> None:
        """Count a message whose handling failed unexpectedly (the caller logs it)."""
        try:
            kind = parse_node_topic(topic).kind.value
        except TopicError:
            kind = UNKNOWN_TYPE
        self.rejects["internal", kind] += 1

    def _apply(self, message: Any, now: float, state: NodeState | None) -> bool:
        """Update state (``state``: the node's before, None if new) from a new, checked
        message; False for a stale status."""
        match message:
            case Status():
                self._profiles.add(message.node)
                return self.fleet.apply_status(message, now)
            case ResultBatch():
                anomalous = count_flags(message.flags, message.n)
                self._apply_result(message, anomalous, now, state)
            case Event():
                message.model = self.fleet.shared_model(message.model)
                self.fleet.apply_event(message, now)
                self.episodes.on_event(message, now)
            case Telemetry():
                model = state.model if state is not None else None
                self.fleet.apply_telemetry(message, now)
                changed = self.fleet.node(message.node)
                if changed is None or changed.model is not model:
                    self._profiles.add(message.node)
                self._healths.add(message.node)
            case Drift():
                self._profiles.add(message.node)
                self.fleet.apply_drift(message, now)
            case Ack():
                self.fleet.touch(message.node, message.boot, now)
                self.acks_received += 1
                self._acks.on_ack(message, now)
            case Capture():
                self.fleet.touch(message.node, message.boot, now)
                self.capture_chunks += 1
                self._captures.on_capture(message, now)
            case ShadowReport():
                self.fleet.apply_shadow(message, now)
            case _:
                raise TypeError(f"no handler for {type(message).__name__}")
        return True

    def _apply_result(
        self, batch: ResultBatch, anomalous: int, now: float, state: NodeState | None
    ) -> None:
        """Count a batch; its node's profile changed unless the batch is of the node's newest
        boot and model (then only counters, last seen and that boot's coverage did)."""
        model = state.model if state is not None else None
        newest = next(reversed(state.coverage), None) if state is not None else None
        self.fleet.apply_result(batch, anomalous, now)
        if state is None or newest != batch.boot or state.model is not model:
            self._profiles.add(batch.node)

    def _reject(self, topic: str, reason: str, kind: str, detail: str, node: str = "") -> Outcome:
        self.rejects[reason, kind] += 1
        log.warning("rejected message on %s: %s: %s", _clip(topic), reason, _clip(detail))
        return Outcome("rejected", kind, node, reason, detail)


def _clip(text: str, limit: int = 300) -> str:
    """Shorten text for a log line: a hostile topic can be 64 KiB long."""
    return text if len(text) <= limit else text[:limit] + "..."
