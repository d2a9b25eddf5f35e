"""``cloud-hub serve``: wires config, registry, ingest, metrics and MQTT, and runs the loop."""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType

from cloud_hub.commands.identity import HubIdentity, sender_id
from cloud_hub.commands.ledger import Ledger, LedgerError
from cloud_hub.commands.lifecycle import AckTracker, LifecycleCounts, lifecycle_counts
from cloud_hub.config import HubConfig, resolve_password
from cloud_hub.ingest.behaviour import Behaviour
from cloud_hub.ingest.dedupe import Deduper
from cloud_hub.ingest.events_store import EpisodeSink, EventStore
from cloud_hub.ingest.fleet import FleetState
from cloud_hub.ingest.inbound import Bounds, Ingest
from cloud_hub.ingest.metrics import DeliveryCounts, HubCollector
from cloud_hub.ingest.metrics_http import MetricsServer
from cloud_hub.ingest.receipts import ReceiptPacer, receipt
from cloud_hub.ingest.transport import HubTransport, Inbound
from cloud_hub.models.capture_store import CaptureStore
from cloud_hub.models.catalog import Catalog
from cloud_hub.models.chunks import ChunkServer
from cloud_hub.retraining.wiring import retrain_loop
from cloud_hub.rollouts.runner import RolloutRunner
from cloud_hub.store.base import SharedStore, StoreError, node_ids, open_store
from schemas.codec import encode
from schemas.topics import Kind, node_topic

log = logging.getLogger(__name__)

POLL_TIMEOUT_S = 0.2
# While chunks or receipts wait (for room in paho's queue, or their interval), come back this often.
PUMP_INTERVAL_S = 0.02
# How long a drain keeps gathering messages after the first one before it commits: a commit
# (one SQLite transaction, one write of acks) per message or two is most of the hub's work when
# 10,000 nodes trickle in their messages, each dirtying its own pages of the store; 100 ms is
# small next to the receipt interval, and the broker may have 1,000 deliveries unacked.
GATHER_S = 0.1
# Receipts handed to paho per round of the loop: about what its queue of outgoing messages
# takes (transport.MAX_QUEUED); more would only be given back.
RECEIPTS_PER_ROUND = 200


class StartupError(RuntimeError):
    """The hub cannot start (a port in use, ...); the message says what and where."""


class HubApp:
    """One hub process: state, registry, catalog, ledger, /metrics and the MQTT loop."""

    def __init__(self, config: HubConfig, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        password = resolve_password(config.mqtt)
        self.fleet = FleetState(config.ingest.offline_after_s)
        # SimpleQueue: its put and get are C calls, on paho's network thread and the loop.
        self.inbox: queue.SimpleQueue[Inbound] = queue.SimpleQueue()
        self.transport = HubTransport(config.mqtt, password, self.inbox)
        self.registry = open_store(config.store.url, Path(config.store.db))
        # On a shared store (several hubs) messages are applied inside the commit's
        # transaction, to the nodes' state as stored then (see _commit_shared).
        self._shared: SharedStore | None = (
            self.registry if isinstance(self.registry, SharedStore) else None
        )
        self._refresh_s = config.store.refresh_s
        self._refreshed = -float("inf")
        # Where the last run stopped: totals, reading coverage, and the seqs seen per stream
        # (streams are loaded one by one, when a message of theirs arrives).
        self.fleet.restore(self.registry.load_states())
        self.fleet.shadows.update(self.registry.load_shadows())
        deduper = Deduper(load=self.registry.load_stream)
        deduper.restore(self.registry.stream_gaps())
        self._commit_batch = config.ingest.commit_batch
        self._unacked: list[Inbound] = []
        self._commits = 0
        self._commit_failures = 0
        self.receipts = ReceiptPacer(config.ingest.receipt_interval_s)
        self.identity = HubIdentity(sender_id(config.mqtt.client_id))
        self.catalog = Catalog(config.store.models_path())
        self.ledger = Ledger(config.store.ledger_path())
        self.chunks = ChunkServer(
            self.catalog,
            self._chunk_size_of,
            self.transport,
            self.identity,
        )
        self.captures = CaptureStore(config.store.captures_path())
        self.retrain = retrain_loop(
            config,
            fleet=self.fleet,
            lock=self._lock,
            publisher=self.transport,
            identity=self.identity,
            ledger=self.ledger,
            catalog=self.catalog,
        )
        loop = [self.retrain] if self.retrain is not None else []
        behaviour = Behaviour()
        self.rollouts = RolloutRunner.open(
            config, self.fleet, behaviour, self.catalog, self.ledger, self.transport, self.identity
        )
        self.acks = AckTracker(self.ledger, [self.chunks, self.rollouts, *loop])
        self.events = EventStore(config.store.events_path())
        self.ingest = Ingest(
            self.fleet,
            deduper,
            acks=self.acks,
            captures=self.captures,
            bounds=Bounds(clock_ahead_s=config.ingest.max_clock_ahead_s),
            episodes=EpisodeSink(self.events),
            behaviour=behaviour,
        )
        collector = HubCollector(
            self.ingest,
            clock=clock,
            lock=self._lock,
            per_node=config.metrics.per_node,
            per_node_limit=config.metrics.per_node_limit,
            max_groups=config.metrics.max_groups,
            lifecycle=self.lifecycle_counts,
            backlog=self.inbox.qsize,
            delivery=self.delivery_counts,
            rollouts=self.rollouts.counts,
            retrain=self.retrain.counts if self.retrain is not None else None,
        )
        try:
            self.metrics = MetricsServer(collector.render, config.metrics.host, config.metrics.port)
        except OSError as exc:
            self._close_stores()
            where = f"{config.metrics.host}:{config.metrics.port}"
            raise StartupError(f"metrics: cannot listen on {where}: {exc.strerror}") from None
        log.info("metrics at %s; registry at %s", self.metrics.url, self.registry.location)
        log.info("models at %s; ledger at %s", self.catalog.root, self.ledger.path)

    def lifecycle_counts(self) -> LifecycleCounts:
        """Ack, chunk and capture counters (called by the collector, under the lock)."""
        return lifecycle_counts(self.acks, self.chunks, self.captures)

    def delivery_counts(self) -> DeliveryCounts:
        """Commits and receipts (called by the collector, under the lock)."""
        return DeliveryCounts(
            self._commits, self._commit_failures, self.receipts.sent, self.receipts.pending
        )

    def _chunk_size_of(self, command_id: str) -> int | None:
        """The chunk size a deploy was issued with (None: unknown to this ledger)."""
        try:
            record = self.ledger.command(command_id)
        except LedgerError as exc:
            log.error("%s", exc)
            return None
        size = record.args.get("chunk_size") if record is not None else None
        return size if isinstance(size, int) and size >= 1 else None

    def run(self, stop: threading.Event) -> None:
        """Handle messages until ``stop`` is set, then commit and disconnect."""
        self.transport.start()
        try:
            while not stop.is_set():
                waiting = self.chunks.pending or self.receipts.pending
                self._drain(PUMP_INTERVAL_S if waiting else POLL_TIMEOUT_S)
                self.commit()
                self.pump()
                self.send_receipts()
                self.refresh()
                if self.retrain is not None:
                    self.retrain.tick(self._clock())
                with self._lock:
                    self.rollouts.tick(self._clock())
        finally:
            self.close()

    def _drain(self, timeout: float) -> None:
        """Apply what is queued (at most one commit batch), blocking up to ``timeout`` for the
        first message."""
        try:
            messages = [self.inbox.get(timeout=timeout)]
        except queue.Empty:
            return
        get = self.inbox.get
        until = time.monotonic() + GATHER_S
        try:
            while len(messages) < self._commit_batch:
                messages.append(get(timeout=max(0.0, until - time.monotonic())))
        except queue.Empty:
            pass
        if self._shared is not None:  # applied at the commit, inside its transaction
            self._unacked.extend(messages)
            return
        # One lock for the batch, not one per message: a scrape waits at most one batch.
        with self._lock:
            for message in messages:
                self._apply(message)

    def handle(self, message: Inbound) -> None:
        """Apply one message to state (rejected ones too: counted); it is acked after the
        next commit. On a shared store it is only queued: the commit applies it."""
        if self._shared is not None:
            self._unacked.append(message)
            return
        with self._lock:
            self._apply(message)

    def _apply(self, message: Inbound) -> None:
        """:meth:`handle` with the lock held."""
        try:
            self.ingest.handle(message.topic, message.payload, self._clock())
        except StoreError as exc:
            # The dedupe state could not be read: applying could count a replay. Leave the
            # message unacked; the broker delivers it again on the next connection.
            log.error("not applied, left for redelivery: %s", exc)
            return
        except Exception:
            # A bug must not stop the hub or wedge the broker redelivering the message.
            log.exception("internal error handling a message on %s", message.topic)
            self.ingest.record_internal_error(message.topic)
        self._unacked.append(message)

    def commit(self) -> None:
        """Write what changed (node totals and status, reading coverage, seqs seen) in one
        transaction; only then ack the messages applied and queue their receipts."""
        if self._shared is not None:
            self._commit_shared()
            return
        now = self._clock()
        with self._lock:
            states = self.fleet.take_dirty()
            streams = self.ingest.deduper.take_dirty()
            if not (states or streams or self._unacked):
                return
            profiles, healths = self.ingest.take_profiles(), self.ingest.take_healths()
            try:
                self.registry.commit(
                    states, streams, now, self.fleet.shadows, profiles=profiles, healths=healths
                )
            except StoreError as exc:
                # Nothing is acked or confirmed; the next round tries again with all of it.
                self.fleet.mark_dirty(states)
                self.ingest.deduper.mark_dirty(streams)
                self.ingest.mark_profiles(profiles, healths)
                self._commit_failures += 1
                log.error("%s", exc)
                return
            self._commits += 1
            due = self.ingest.deduper.take_due()
            applied, self._unacked = self._unacked, []
        self.transport.ack_many(applied)
        self.receipts.offer(due)

    def _commit_shared(self) -> None:
        """Apply the queued messages inside one transaction that holds their nodes: their
        state is read from the store (another hub may have changed it), the messages are
        applied to it, and the result is written before the locks go. Then ack and confirm
        what the store now holds of each stream, whichever hub wrote it."""
        if not self._unacked or self._shared is None:
            return
        now = self._clock()
        messages = self._unacked
        nodes = node_ids(m.topic for m in messages)
        with self._lock:
            try:
                with self._shared.locked(nodes) as stored:
                    self.fleet.reload(stored.states, nodes)
                    self.ingest.deduper.reload(stored.gaps, nodes)
                    for message in messages:
                        self._apply_shared(message, now)
                    streams = self.ingest.deduper.take_dirty()
                    dirty = self.fleet.take_dirty()
                    # Lost with a rollback: applying the messages again marks them again.
                    profiles, healths = self.ingest.take_profiles(), self.ingest.take_healths()
                    self.registry.commit(
                        dirty, streams, now, self.fleet.shadows, profiles=profiles, healths=healths
                    )
                    due = self.ingest.deduper.take_due()
            except StoreError as exc:
                # Rolled back: the next round reads the nodes again and applies it all again.
                self._commit_failures += 1
                log.error("%s", exc)
                return
            self._commits += 1
            self._unacked = []
        self.transport.ack_many(messages)
        self.receipts.offer(due)

    def _apply_shared(self, message: Inbound, now: float) -> None:
        try:
            self.ingest.handle(message.topic, message.payload, now)
        except StoreError:
            raise  # the transaction is lost: roll back, try again next round
        except Exception:
            log.exception("internal error handling a message on %s", message.topic)
            self.ingest.record_internal_error(message.topic)

    def refresh(self) -> None:
        """On a shared store, read the whole fleet back every ``store.refresh_s``, so that
        this hub's /metrics shows what every hub committed (not only its own share)."""
        now = time.monotonic()
        if self._shared is None or now - self._refreshed < self._refresh_s:
            return
        self._refreshed = now
        try:
            states, gaps = self.registry.load_states(), self.registry.stream_gaps()
        except StoreError as exc:
            log.error("%s", exc)
            return
        with self._lock:
            self.fleet.reload(states)
            self.ingest.deduper.reload(gaps)

    def send_receipts(self) -> None:
        """Publish the receipts whose interval has passed (paho queues them while offline)."""
        if not self.receipts.pending:
            return
        now = self._clock()
        ready = self.receipts.take(now, RECEIPTS_PER_ROUND)
        for i, (key, ranges) in enumerate(ready):
            message = receipt(key, ranges, self.identity.boot, self.identity.next_seq(), now)
            # QoS 0: receipts are cumulative, so a lost one costs time only (the next receipt
            # or the node's resend covers it), and the hub reads no PUBACK per receipt.
            topic = node_topic(key[0], Kind.RECEIPT)
            if self.transport.offer(topic, encode(message), qos=0) == "full":
                for later_key, later_ranges in ready[i:]:  # paho's queue is full: next round
                    self.receipts.give_back(later_key, later_ranges)
                return

    def pump(self) -> None:
        """Hand some of the chunks that nodes asked for to the MQTT client."""
        if not self.chunks.pending:
            return
        with self._lock:
            self.chunks.pump(self._clock())

    def close(self) -> None:
        """Final commit, then disconnect and release the port and the database."""
        try:
            self.commit()
            self.send_receipts()
        finally:
            self.transport.stop()
            self.metrics.close()
            self._close_stores()
            log.info("cloud-hub stopped")

    def _close_stores(self) -> None:
        if self.retrain is not None:
            self.retrain.close()
        self.registry.close()
        self.catalog.close()
        self.ledger.close()
        self.events.close()
        self.rollouts.store.close()


def serve(config: HubConfig) -> int:
    """Run the hub until SIGINT or SIGTERM; return the exit code."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        log.info("got %s, stopping", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        HubApp(config).run(stop)
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0
