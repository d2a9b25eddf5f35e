"""The node's MQTT client: the only edge module that imports paho.

Callbacks run on paho's network thread; they only put events on a queue for the main loop
(they must never raise: paho re-raises into its loop). paho keeps every QoS 1 message it
accepted and re-sends it after a reconnect, so the node hands a message over once and waits for
its PUBACK, which arrives as a :class:`PubAck` event keyed by message id.

The session is persistent (``clean_start=False`` on every connect, with a session expiry):
the broker keeps the node's subscriptions and queues QoS 1 commands while the node is away.
Subscriptions are made again on every connect anyway, since a session may have expired.
"""

from __future__ import annotations

import logging
import queue
import ssl
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from schemas.connection import (
    ConnectionReport,
    Flapping,
    broker_url,
    explain,
    refused_by_broker,
    taken_over,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class MqttSettings:
    """What the transport needs to know; built by the app from the node's config."""

    host: str
    port: int
    client_id: str
    username: str
    password: str
    keepalive_s: int = 30
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    max_inflight: int = 100
    reconnect_min_s: int = 1
    reconnect_max_s: int = 60
    session_expiry_s: int = 3600


@dataclass(frozen=True, slots=True)
class Connected:
    session_present: bool


@dataclass(frozen=True, slots=True)
class Disconnected:
    reason: str


@dataclass(frozen=True, slots=True)
class PubAck:
    mid: int
    ok: bool
    reason: str


@dataclass(frozen=True, slots=True)
class Incoming:
    topic: str
    payload: bytes


Event = Connected | Disconnected | PubAck | Incoming


class Published:
    """Outcome of handing a message to the client."""

    __slots__ = ("mid", "queued", "reason")

    def __init__(self, mid: int, queued: bool, reason: str) -> None:
        self.mid = mid
        self.queued = queued
        self.reason = reason


class NodeTransport:
    """paho client wrapper: connect with a last will, publish, report events on a queue."""

    def __init__(
        self, settings: MqttSettings, will_topic: str, will_payload: bytes, subscriptions: list[str]
    ) -> None:
        self.events: queue.Queue[Event] = queue.Queue()
        self.connected = threading.Event()
        self._settings = settings
        # Topic sets shared with the network thread (on_connect), hence the lock.
        self._lock = threading.Lock()
        self._subscriptions = set(subscriptions)
        self._stale: set[str] = set()  # to unsubscribe at the next connect
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=settings.client_id, protocol=mqtt.MQTTv5
        )
        client.username_pw_set(settings.username, settings.password or None)
        if settings.tls_ca:
            client.tls_set(
                ca_certs=settings.tls_ca,
                certfile=settings.tls_cert or None,
                keyfile=settings.tls_key or None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        client.will_set(will_topic, will_payload, qos=1, retain=True)
        client.max_inflight_messages_set(settings.max_inflight)
        client.reconnect_delay_set(settings.reconnect_min_s, settings.reconnect_max_s)
        client.on_connect = self._on_connect
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self._client = client
        # Why the node is not connected, at WARNING at most once a minute (network thread only).
        self._flapping = Flapping()
        self._report = ConnectionReport(
            broker_url(settings.host, settings.port, bool(settings.tls_ca))
        )

    def start(self) -> None:
        """Connect in the background; paho reconnects with backoff from then on."""
        s = self._settings
        log.info("connecting to %s as %s", self._report.url, s.username)
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho lacks hints
        properties.SessionExpiryInterval = s.session_expiry_s
        self._client.connect_async(
            s.host, s.port, keepalive=s.keepalive_s, clean_start=False, properties=properties
        )
        self._client.loop_start()

    def subscribe(self, topic: str) -> None:
        """Subscribe (QoS 1) now if connected, and again on every connect."""
        with self._lock:
            self._subscriptions.add(topic)
            self._stale.discard(topic)
            if self.connected.is_set():
                self._client.subscribe(topic, qos=1)

    def unsubscribe(self, topic: str) -> None:
        """Stop receiving ``topic`` (at the next connect if not connected now, because a
        persistent session keeps subscriptions across connections)."""
        with self._lock:
            self._subscriptions.discard(topic)
            if self.connected.is_set():
                self._client.unsubscribe(topic)
            else:
                self._stale.add(topic)

    def publish(self, topic: str, payload: bytes, *, retain: bool = False) -> Published:
        """Hand a QoS 1 message to the client; ``queued`` False means it was refused."""
        info = self._client.publish(topic, payload, qos=1, retain=retain)
        # NO_CONN still queues the message: paho sends it once the connection is back.
        queued = info.rc in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN)
        return Published(info.mid, queued, mqtt.error_string(info.rc))

    def stop(
        self, offline_topic: str = "", offline_payload: bytes = b"", timeout: float = 2.0
    ) -> None:
        """Publish a final offline status (if given), disconnect cleanly, stop the loop."""
        if offline_topic and self.connected.is_set():
            info = self._client.publish(offline_topic, offline_payload, qos=1, retain=True)
            if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
                try:
                    info.wait_for_publish(timeout)
                except (RuntimeError, ValueError) as exc:
                    log.warning("offline status not confirmed: %s", exc)
        self._client.disconnect()
        self._client.loop_stop()

    # paho callbacks: hand off, never raise.

    def _on_connect(
        self,
        client: mqtt.Client,
        _u: Any,
        flags: mqtt.ConnectFlags,
        reason: ReasonCode,
        _p: Properties | None,
    ) -> None:
        if reason.is_failure:
            self._warn(refused_by_broker(str(reason)))
            return
        if (line := self._report.connected(time.monotonic())) is not None:
            log.info("%s", line)
        self._flapping.connected(time.monotonic())
        with self._lock:
            for topic in sorted(self._stale):
                client.unsubscribe(topic)
            self._stale.clear()
            for topic in sorted(self._subscriptions):
                client.subscribe(topic, qos=1)
            self.connected.set()
        self.events.put(Connected(flags.session_present))

    def _on_connect_fail(self, _c: mqtt.Client, _u: Any) -> None:
        # paho calls this inside its `except OSError`, so the exception is still at hand.
        s = self._settings
        self._warn(explain(sys.exc_info()[1], s.host, s.port, s.tls_ca))

    def _warn(self, why: str) -> None:
        line = self._report.failed(why, time.monotonic())
        log.log(logging.DEBUG if line is None else logging.WARNING, "%s", line or why)

    def _on_disconnect(
        self,
        _c: mqtt.Client,
        _u: Any,
        _f: mqtt.DisconnectFlags,
        reason: ReasonCode,
        _p: Properties | None,
    ) -> None:
        self.connected.clear()
        if self._flapping.dropped(time.monotonic(), reason.value):
            log.error(
                "%s", taken_over(self._report.url, self._settings.client_id, self._flapping.run)
            )
        self.events.put(Disconnected(str(reason)))

    def _on_publish(
        self, _c: mqtt.Client, _u: Any, mid: int, reason: ReasonCode, _p: Properties | None
    ) -> None:
        self.events.put(PubAck(mid, not reason.is_failure, str(reason)))

    def _on_message(self, _c: mqtt.Client, _u: Any, message: mqtt.MQTTMessage) -> None:
        self.events.put(Incoming(message.topic, bytes(message.payload)))
