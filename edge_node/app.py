"""The edge node's main loop: source -> pipeline -> outbox -> MQTT, plus timers and commands.

Everything here runs on one thread; the MQTT client's network thread only feeds
``transport.events``, the model worker (edge_node.lifecycle.switcher) only loads models, and a
device source's reader thread (edge_node.sources.polling) only fills the buffer ``poll`` drains. A
message counts as accepted once it is in the outbox, and leaves the outbox only when the hub's
receipt names it (edge_node.delivery.resend decides when to send the unconfirmed ones again).
Commands and model chunks arrive as transport events and go to :class:`Control`, which answers
with messages to queue and never blocks the loop.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import msgspec

from edge_node.delivery.outbox import Outbox, OutboxError, Priority
from edge_node.delivery.outgoing import (
    Outgoing,
    Sequencer,
    drift_message,
    result_message,
    scored_messages,
)
from edge_node.delivery.resend import ResendClock
from edge_node.delivery.transport import Connected, Disconnected, Event, Incoming, PubAck, Published
from edge_node.lifecycle.control import Control
from edge_node.scoring.batcher import PendingBatch
from edge_node.scoring.pipeline import Pipeline, Scored
from edge_node.sources.base import Source
from edge_node.telemetry.procstats import ProcessSampler
from edge_node.telemetry.stats import LatencyWindow, PowerModel
from schemas.codec import DecodeError, decode, encode
from schemas.messages import Capabilities, Receipt, SourceHealth, Status, Telemetry
from schemas.topics import Kind, node_topic

log = logging.getLogger(__name__)

PRIORITY = {
    Kind.TELEMETRY: Priority.STATS,
    Kind.DRIFT: Priority.STATS,
    Kind.RESULT: Priority.DATA,
    Kind.CAPTURE: Priority.DATA,
    Kind.EVENT: Priority.EVENTS,
    Kind.ACK: Priority.EVENTS,
    Kind.SHADOW: Priority.STATS,
}


class Transport(Protocol):
    """The MQTT port (edge_node.delivery.transport.NodeTransport in production)."""

    events: queue.Queue[Event]
    connected: threading.Event

    def start(self) -> None: ...

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> Published: ...

    def subscribe(self, topic: str) -> None: ...

    def unsubscribe(self, topic: str) -> None: ...

    def stop(
        self, offline_topic: str = "", offline_payload: bytes = b"", timeout: float = 2.0
    ) -> None: ...


@dataclass(frozen=True)
class Timers:
    telemetry_s: float
    drift_s: float
    max_handed: int
    max_packet_bytes: int = 262144
    drain_s: float = 5.0
    resend_s: float = 10.0
    resend_max_s: float = 300.0


class EdgeNode:
    """One device's process: scores its sensor stream, ships the results, obeys commands."""

    def __init__(
        self,
        *,
        seq: Sequencer,
        source: Source,
        pipeline: Pipeline,
        control: Control,
        outbox: Outbox,
        transport: Transport,
        timers: Timers,
        power: PowerModel,
        capabilities: Capabilities,
        started_at: float,
    ) -> None:
        self.seq = seq
        self.source = source
        self.pipeline = pipeline
        self.control = control
        self.outbox = outbox
        self.transport = transport
        self.timers = timers
        self.errors: Counter[str] = Counter()
        self._power = power
        self._capabilities = capabilities
        self._started_at = started_at
        self._latency = LatencyWindow()
        self._sampler = ProcessSampler()
        self._inflight: dict[int, int] = {}  # MQTT message id -> outbox id
        self._last_handed = 0
        self.receipt_topic = node_topic(seq.node, Kind.RECEIPT)
        self.resend = ResendClock(timers.resend_s, timers.resend_max_s)
        self.receipts = 0
        self.confirmed = 0
        self._finished = False
        self._announced = pipeline.scorer.ref  # the model the last birth message named
        self._reported_rollbacks = 0
        now = time.monotonic()
        self._next_telemetry = now + timers.telemetry_s
        self._next_drift = now + timers.drift_s
        self._last_telemetry = now
        self._clock = (now, time.time())  # (monotonic, wall) of the current step

    # -- the loop ---------------------------------------------------------------------------

    def run(self, stop: threading.Event, exit_when_drained: bool = False) -> None:
        """Run until ``stop`` is set (or, with ``exit_when_drained``, the source is done and
        the hub has confirmed everything it produced)."""
        self.start(time.monotonic(), time.time())
        while not stop.is_set():
            self.step(time.monotonic(), time.time())
            if exit_when_drained and self._finished and self.outbox.depth == 0:
                break
        self._shutdown()

    def start(self, now: float, wall: float) -> None:
        """Connect, and answer what a restart interrupted (``now`` monotonic, ``wall`` unix)."""
        self.source.start(now, wall)
        self.transport.start()
        self._next_telemetry = now + self.timers.telemetry_s
        self._next_drift = now + self.timers.drift_s
        self._last_telemetry = now
        self._queue_all(self.control.start(wall))

    def step(self, now: float, wall: float, idle_wait: float = 0.02) -> None:
        """One turn of the loop; waits up to ``idle_wait`` for broker events when idle."""
        self._clock = (now, wall)
        block = self.source.poll(now)
        if block is not None:
            scored = self.pipeline.process(block, now, time.perf_counter)
            self._queue_scored(scored)
            self._queue_all(self.control.observe(block, scored, wall))
        for batch in self.pipeline.flush(now):
            self._queue_result(batch)
        self._handle_events(timeout=0.0 if block is not None else idle_wait)
        self._queue_all(self.control.tick(now, wall))
        self._announce()
        # A rollback is news the hub should not wait a whole telemetry interval for.
        if now >= self._next_telemetry or self.control.rollbacks != self._reported_rollbacks:
            self._queue_telemetry(now - self._last_telemetry)
            self._last_telemetry, self._next_telemetry = now, now + self.timers.telemetry_s
        if now >= self._next_drift:
            self._queue_drift()
            self._next_drift = now + self.timers.drift_s
        if self.source.exhausted and not self._finished:
            self._finish_stream(now - self._last_telemetry)
            self._last_telemetry = now
        self._resend(now)
        self._pump()

    def _resend(self, now: float) -> None:
        """Hand the unconfirmed messages to the client again when the oldest has waited too
        long for its receipt (the broker may have lost it, or the hub's session with it)."""
        if not self.transport.connected.is_set():
            return
        if self.resend.due(self.outbox.oldest_id(), self._last_handed, now):
            log.warning(
                "no receipt for message %s in %.0f s: sending %d unconfirmed messages again",
                self.outbox.oldest_id(),
                self.resend.waited,
                self.outbox.depth,
            )
            # paho may still hold some of them; handing them over again beside it only makes
            # copies the hub drops, while waiting on it could wait for ever.
            self._last_handed = 0
            self._inflight.clear()

    def _finish_stream(self, since_telemetry: float) -> None:
        """The source has nothing more: send what is pending now rather than on a timer."""
        for batch in self.pipeline.flush(time.monotonic(), force=True):
            self._queue_result(batch)
        self._queue_drift()
        self._queue_telemetry(since_telemetry)
        self._finished = True
        log.info("source exhausted; %d messages waiting for the broker", self.outbox.depth)

    def _shutdown(self) -> None:
        for batch in self.pipeline.flush(time.monotonic(), force=True):
            self._queue_result(batch)
        deadline = time.monotonic() + self.timers.drain_s
        while self.outbox.depth and self.transport.connected.is_set():
            if time.monotonic() > deadline:
                break
            self._pump()
            self._clock = (time.monotonic(), time.time())
            self._handle_events(timeout=0.05)
        log.info("stopping; %d messages stay in the outbox for the next start", self.outbox.depth)
        self.control.close()
        self.source.close()
        self.transport.stop(self.status_topic, self._status("offline"))
        self.outbox.close()

    # -- queueing ---------------------------------------------------------------------------

    def _queue_scored(self, scored: Scored) -> None:
        self._latency.add(scored.latency_ms, scored.readings)
        if scored.error:
            self.errors["inference" if "failed" in scored.error else "nonfinite_scores"] += 1
            log.warning("model %s: %s", self.pipeline.scorer.ref, scored.error)
        self._queue_all(scored_messages(self.seq, scored, time.time()))

    def _queue_all(self, messages: list[Outgoing]) -> None:
        for kind, message in messages:
            self._queue(kind, message)

    def _queue_result(self, batch: PendingBatch) -> None:
        self._queue(Kind.RESULT, result_message(self.seq.take(time.time()), batch))

    def _queue_drift(self) -> None:
        report = self.pipeline.drift_report()
        if report is not None:
            env = self.seq.take(time.time())
            self._queue(Kind.DRIFT, drift_message(env, report, self.pipeline.scorer.ref))

    def _queue_telemetry(self, interval: float) -> None:
        self._reported_rollbacks = self.control.rollbacks
        latency, readings = self._latency.snapshot()
        proc = self._sampler.sample()
        if proc.rapl_watts is not None:
            watts = proc.rapl_watts
            method = "RAPL energy counter of the whole CPU package"
        else:
            watts, method = self._power.watts(proc.busy_cores), self._power.method
        interval = max(interval, 1e-9)
        self._queue(
            Kind.TELEMETRY,
            Telemetry(
                **self.seq.take(time.time()),
                interval_s=interval,
                readings=readings,
                readings_per_s=readings / interval,
                latency_ms=latency,
                rss_bytes=proc.rss_bytes,
                cpu_percent=proc.cpu_percent,
                power_w=watts,
                power_method=method,
                outbox_depth=self.outbox.depth,
                outbox_bytes=self.outbox.size_bytes,
                dropped=sum(self.outbox.dropped.values()) + self.errors["broker_refused"],
                errors=dict(self.errors + self.control.errors),
                model=self.pipeline.scorer.ref,
                rollbacks=self.control.rollbacks,
                source=self._source_health(),
                sensor_faults=dict(self.pipeline.sensor_faults),
            ),
        )

    def _source_health(self) -> SourceHealth | None:
        stats = self.source.stats()
        if stats is None:
            return None
        return SourceHealth(
            connected=stats.connected,
            readings=stats.readings,
            dropouts=stats.dropouts,
            reconnects=stats.reconnects,
        )

    def _queue(self, kind: Kind, message: msgspec.Struct) -> None:
        """Put one message in the outbox (its seq is spent even if the policy drops it)."""
        topic, payload = node_topic(self.seq.node, kind), encode(message)
        # A packet over the broker's limit gets the connection dropped, and paho would send it
        # again after every reconnect: refuse it here. 16 bytes cover header and properties.
        if len(payload) + len(topic) + 16 > self.timers.max_packet_bytes:
            self.errors["too_large"] += 1
            log.error(
                "%s message of %d bytes exceeds the broker's packet limit %d; dropped",
                kind.value,
                len(payload),
                self.timers.max_packet_bytes,
            )
            return
        env: Any = message
        try:
            self.outbox.put(
                topic,
                kind.value,
                payload,
                PRIORITY[kind],
                handed_upto=self._last_handed,
                boot=env.boot,
                seq=env.seq,
            )
        except OutboxError as exc:
            self.errors["outbox_write"] += 1
            log.error("%s", exc)

    # -- MQTT -------------------------------------------------------------------------------

    @property
    def status_topic(self) -> str:
        return node_topic(self.seq.node, Kind.STATUS)

    def _status(self, state: Literal["online", "offline"]) -> bytes:
        return encode(
            Status(
                **self.seq.peek(time.time()),
                state=state,
                started_at=self._started_at,
                models=[self.pipeline.scorer.ref] if state == "online" else [],
                capabilities=self._capabilities,
            )
        )

    def _handle_events(self, timeout: float) -> None:
        try:
            event = (
                self.transport.events.get(timeout=timeout)
                if timeout
                else self.transport.events.get_nowait()
            )
        except queue.Empty:
            return
        refused: list[int] = []
        while True:
            self._handle(event, refused)
            try:
                event = self.transport.events.get_nowait()
            except queue.Empty:
                break
        self.outbox.remove(refused)

    def _handle(self, event: Event, refused: list[int]) -> None:
        match event:
            case PubAck(mid=mid, ok=ok, reason=reason):
                # A PUBACK frees room for the next message; only the hub's receipt deletes it,
                # except when the broker refuses it: sending it again would never help.
                outbox_id = self._inflight.pop(mid, None)
                if outbox_id is not None and not ok:
                    refused.append(outbox_id)
                    self.errors["broker_refused"] += 1
                    log.warning("broker refused message %d: %s", outbox_id, reason)
            case Connected():
                log.info("connected; publishing birth, %d messages queued", self.outbox.depth)
                self._announced = self.pipeline.scorer.ref
                self.transport.publish(self.status_topic, self._status("online"), retain=True)
            case Disconnected(reason=reason):
                log.warning(
                    "disconnected (%s); scoring goes on, messages wait in the outbox", reason
                )
            case Incoming(topic=topic, payload=payload) if topic == self.receipt_topic:
                self._on_receipt(payload)
            case Incoming(topic=topic, payload=payload):
                # The step's clock (passed in to step(), so tests drive time), not a new reading.
                now, wall = self._clock
                self._queue_all(self.control.on_message(topic, payload, now, wall))

    def _on_receipt(self, payload: bytes) -> None:
        """Delete what the hub confirmed (of this boot or an earlier one)."""
        try:
            receipt: Receipt = decode("receipt", payload, self.receipt_topic)
        except DecodeError as exc:
            self.errors["bad_receipt"] += 1
            log.warning("%s", exc)
            return
        if receipt.node != self.seq.node:
            self.errors["bad_receipt"] += 1
            log.warning("receipt for node %r on the topic of %r", receipt.node, self.seq.node)
            return
        self.receipts += 1
        confirmed = self.outbox.confirm(receipt.of_boot, receipt.ranges)
        self.confirmed += confirmed

    def _announce(self) -> None:
        """Publish a new birth when the active model changed, so the retained status (and the
        hub's view of the node) names the model that is scoring."""
        ref = self.pipeline.scorer.ref
        if ref != self._announced and self.transport.connected.is_set():
            self._announced = ref
            self.transport.publish(self.status_topic, self._status("online"), retain=True)

    def _pump(self) -> None:
        """Hand the next outbox messages to the MQTT client, at most ``max_handed`` at once."""
        room = self.timers.max_handed - len(self._inflight)
        if room <= 0 or not self.transport.connected.is_set():
            return
        for entry in self.outbox.pending(room, after_id=self._last_handed):
            published = self.transport.publish(entry.topic, entry.payload)
            if not published.queued:
                self.errors["publish_refused"] += 1
                log.warning("client refused message %d: %s", entry.id, published.reason)
                return
            self._inflight[published.mid] = entry.id
            self._last_handed = entry.id
