"""``cloud-hub serve``: wires config, registry, ingest, metrics and MQTT, and runs the loop."""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType

from cloud_hub.config import HubConfig, resolve_password
from cloud_hub.dedupe import Deduper
from cloud_hub.fleet import FleetState
from cloud_hub.ingest import Ingest
from cloud_hub.metrics import HubCollector, MetricsServer, new_registry
from cloud_hub.registry import Registry, RegistryError, row_of
from cloud_hub.transport import HubTransport, Inbound

log = logging.getLogger(__name__)

FLUSH_INTERVAL_S = 1.0
POLL_TIMEOUT_S = 0.2
# At most this many messages are handled between two flush checks.
DRAIN_BATCH = 1000


class StartupError(RuntimeError):
    """The hub cannot start (a port in use, ...); the message says what and where."""


class HubApp:
    """One hub process: state, registry, /metrics and the MQTT loop."""

    def __init__(self, config: HubConfig, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        password = resolve_password(config.mqtt)
        self.fleet = FleetState(config.ingest.offline_after_s)
        self.ingest = Ingest(self.fleet, Deduper())
        self.inbox: queue.Queue[Inbound] = queue.Queue()
        self.transport = HubTransport(config.mqtt, password, self.inbox)
        collector = HubCollector(
            self.ingest, clock=clock, lock=self._lock, per_node=config.metrics.per_node
        )
        self.registry = Registry(config.store.db)
        try:
            self.metrics = MetricsServer(
                new_registry(collector), config.metrics.host, config.metrics.port
            )
        except OSError as exc:
            self.registry.close()
            where = f"{config.metrics.host}:{config.metrics.port}"
            raise StartupError(f"metrics: cannot listen on {where}: {exc.strerror}") from None
        log.info("metrics at %s; registry at %s", self.metrics.url, self.registry.path)

    def run(self, stop: threading.Event) -> None:
        """Handle messages until ``stop`` is set, then flush and disconnect."""
        self.transport.start()
        last_flush = self._clock()
        try:
            while not stop.is_set():
                self._drain()
                if self._clock() - last_flush >= FLUSH_INTERVAL_S:
                    self.flush()
                    last_flush = self._clock()
        finally:
            self.close()

    def _drain(self) -> None:
        """Handle what is queued, blocking briefly for the first message."""
        try:
            message = self.inbox.get(timeout=POLL_TIMEOUT_S)
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
            self.registry.close()
            log.info("cloud-hub stopped")


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
