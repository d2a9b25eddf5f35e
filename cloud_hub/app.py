"""``cloud-hub serve``: wires config, registry, ingest, metrics and MQTT, and runs the loop."""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from cloud_hub.commands.identity import HubIdentity, sender_id
from cloud_hub.commands.ledger import Ledger, LedgerError
from cloud_hub.commands.lifecycle import AckTracker, LifecycleCounts, lifecycle_counts
from cloud_hub.config import HubConfig, resolve_password
from cloud_hub.ingest.dedupe import Deduper
from cloud_hub.ingest.events_store import EpisodeSink, EventStore
from cloud_hub.ingest.fleet import FleetState
from cloud_hub.ingest.inbound import Ingest
from cloud_hub.ingest.metrics import HubCollector, MetricsServer, new_registry
from cloud_hub.ingest.registry import Registry, RegistryError, row_of
from cloud_hub.ingest.transport import HubTransport, Inbound
from cloud_hub.models.capture_store import CaptureStore
from cloud_hub.models.catalog import Catalog
from cloud_hub.models.chunks import ChunkServer

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 1.0
POLL_TIMEOUT_S = 0.2
# While chunks wait for room in paho's queue, come back for them this often.
PUMP_INTERVAL_S = 0.02
# At most this many messages are handled between two flush checks.
DRAIN_BATCH = 1000


class StartupError(RuntimeError):
    """The hub cannot start (a port in use, ...); the message says what and where."""


class HubApp:
    """One hub process: state, registry, catalog, ledger, /metrics and the MQTT loop."""

    def __init__(self, config: HubConfig, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        password = resolve_password(config.mqtt)
        self.fleet = FleetState(config.ingest.offline_after_s)
        self.inbox: queue.Queue[Inbound] = queue.Queue()
        self.transport = HubTransport(config.mqtt, password, self.inbox)
        self.registry = Registry(config.store.db)
        self.catalog = Catalog(config.store.models_path())
        self.ledger = Ledger(config.store.ledger_path())
        self.chunks = ChunkServer(
            self.catalog,
            self._chunk_size_of,
            self.transport,
            HubIdentity(sender_id(config.mqtt.client_id)),
        )
        self.captures = CaptureStore(config.store.captures_path())
        self.acks = AckTracker(self.ledger, [self.chunks])
        self.events = EventStore(config.store.events_path())
        self.ingest = Ingest(
            self.fleet,
            Deduper(),
            acks=self.acks,
            captures=self.captures,
            episodes=EpisodeSink(self.events),
        )
        collector = HubCollector(
            self.ingest,
            clock=clock,
            lock=self._lock,
            per_node=config.metrics.per_node,
            lifecycle=self.lifecycle_counts,
        )
        try:
            self.metrics = MetricsServer(
                new_registry(collector), config.metrics.host, config.metrics.port
            )
        except OSError as exc:
            self._close_stores()
            where = f"{config.metrics.host}:{config.metrics.port}"
            raise StartupError(f"metrics: cannot listen on {where}: {exc.strerror}") from None
        log.info("metrics at %s; registry at %s", self.metrics.url, self.registry.path)
        log.info("models at %s; ledger at %s", self.catalog.root, self.ledger.path)

    def lifecycle_counts(self) -> LifecycleCounts:
        """Ack, chunk and capture counters (called by the collector, under the lock)."""
        return lifecycle_counts(self.acks, self.chunks, self.captures)

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
        """Handle messages until ``stop`` is set, then flush and disconnect."""
        self.transport.start()
        last_flush = self._clock()
        try:
            while not stop.is_set():
                self._drain(PUMP_INTERVAL_S if self.chunks.pending else POLL_TIMEOUT_S)
                self.pump()
                if self._clock() - last_flush >= FLUSH_INTERVAL_S:
                    self.flush()
                    last_flush = self._clock()
        finally:
            self.close()

    def _drain(self, timeout: float) -> None:
        """Handle what is queued, blocking up to ``timeout`` for the first message."""
        try:
            message = self.inbox.get(timeout=timeout)
        except queue.Empty:
            return
        for _ in range(DRAIN_BATCH):
            self.handle(message)
            try:
                message = self.inbox.get_nowait()
            except queue.Empty:
                return
        self.handle(message)

    def handle(self, message: Inbound) -> None:
        """Apply one message to state, then ack it (also when it was rejected)."""
        with self._lock:
            try:
                self.ingest.handle(message.topic, message.payload, self._clock())
            except Exception:
                # A bug must not stop the hub or wedge the broker redelivering the message.
                log.exception("internal error handling a message on %s", message.topic)
                self.ingest.record_internal_error(message.topic)
        self.transport.ack(message)

    def pump(self) -> None:
        """Hand some of the chunks that nodes asked for to the MQTT client."""
        if not self.chunks.pending:
            return
        with self._lock:
            self.chunks.pump(self._clock())

    def flush(self) -> None:
        """Write the nodes changed since the last flush, in one transaction."""
        # Copy the rows under the lock; the slow part, the disk write, happens without it.
        now = self._clock()
        with self._lock:
            changed = self.fleet.take_dirty()
            rows = [row_of(s, now) for s in changed]
        try:
            written = self.registry.write(rows)
        except RegistryError as exc:
            # Ingest and metrics go on from memory; the next flush retries these nodes.
            with self._lock:
                self.fleet.mark_dirty(changed)
            log.error("%s", exc)
            return
        if written:
            log.debug("registry: wrote %d nodes", written)

    def close(self) -> None:
        """Final flush, then disconnect and release the port and the database."""
        try:
            self.flush()
        finally:
            self.transport.stop()
            self.metrics.close()
            self._close_stores()
            log.info("cloud-hub stopped")

    def _close_stores(self) -> None:
        self.registry.close()
        self.catalog.close()
        self.ledger.close()
        self.events.close()


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
