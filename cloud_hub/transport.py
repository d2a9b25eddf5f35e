"""The hub's MQTT client; the only module of cloud_hub that imports paho.

The session is persistent (``clean_start=False`` plus a session expiry), so QoS 1 messages
that arrive while the hub is down wait in the broker. Acks are manual: a message is
acknowledged only after the hub applied it, so a crash in between means a redelivery
(which dedupe drops), never a loss. Callbacks only hand off to a queue and never raise:
paho re-raises callback exceptions inside its network loop.
"""

from __future__ import annotations

import logging
import queue
import ssl
import threading
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

from cloud_hub.config import MqttConfig
from schemas.topics import NODE_TO_HUB, subscription

log = logging.getLogger(__name__)

# Unacked QoS 1 deliveries the broker may have outstanding to the hub: this bounds the
# inbound queue (and so the hub's memory) while the main loop catches up.
RECEIVE_MAXIMUM = 1000


class TransportError(RuntimeError):
    """paho refused a publish; the message names the topic and paho's reason."""


@dataclass(frozen=True, slots=True)
class Inbound:
    """One delivered message; ``connection`` tells which connection must ack it."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    connection: int


class HubTransport:
    """Subscribes to every node-to-hub kind and hands messages to ``inbox``."""

    def __init__(
        self,
        config: MqttConfig,
        password: str,
        inbox: queue.Queue[Inbound],
        receive_maximum: int = RECEIVE_MAXIMUM,
    ) -> None:
        self.connected = threading.Event()
        self._config = config
        self._inbox = inbox
        self._connection = 0
        self._stopping = False
        self._failures = 0
        self._receive_maximum = receive_maximum
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=config.client_id,
            protocol=mqtt.MQTTv5,
            manual_ack=True,
        )
        client.username_pw_set(config.username, password or None)
        if config.tls_ca or config.tls_cert:
            client.tls_set(
                ca_certs=config.tls_ca or None,
                certfile=config.tls_cert or None,
                keyfile=config.tls_key or None,
                tls_version=ssl.PROTOCOL_TLS_CLIENT,
            )
        client.reconnect_delay_set(min_delay=1, max_delay=30)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_connect_fail = self._on_connect_fail
        client.on_message = self._on_message
        self._client = client

    def start(self) -> None:
        """Connect in the background; paho retries with backoff until it gets through."""
        c = self._config
        props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho lacks hints
        props.SessionExpiryInterval = c.session_expiry_s
        props.ReceiveMaximum = self._receive_maximum
        scheme = "mqtts" if c.tls_ca or c.tls_cert else "mqtt"
        log.info("connecting to %s://%s:%d as %s", scheme, c.host, c.port, c.username)
        self._client.connect_async(
            c.host, c.port, keepalive=c.keepalive_s, clean_start=False, properties=props
        )
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect (the broker keeps the session and queues for it) and stop the loop."""
        self._stopping = True
        self._client.disconnect()
        self._client.loop_stop()
        self.connected.clear()

    def ack(self, message: Inbound) -> None:
        """Acknowledge ``message`` after it was applied."""
        if message.qos == 0:
            return
        if message.connection != self._connection:
            # Packet ids belong to a connection: acking an old one could ack another message.
            # The broker redelivers it on the new connection and dedupe drops the copy.
            log.debug("not acking mid %d of an earlier connection", message.mid)
            return
        rc = self._client.ack(message.mid, message.qos)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.warning("ack of mid %d failed: %s", message.mid, mqtt.error_string(rc))

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        """Queue a message for the broker; TransportError if paho refuses it."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        # NO_CONN still queues a QoS > 0 message: paho sends it once reconnected.
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise TransportError(f"publish to {topic} refused: {mqtt.error_string(info.rc)}")
        return info

    # paho callbacks (network thread): hand off, log, never raise.

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            return
        self._connection += 1
        self._failures = 0
        log.info("connected to the broker (session present: %s)", flags.session_present)
        topics = [(subscription(kind), SubscribeOptions(qos=1)) for kind in NODE_TO_HUB]
        result, _mid = client.subscribe(topics)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.error("subscribe failed: %s", mqtt.error_string(result))
        self.connected.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # Warn once per outage, not on every retry.
        self._failures += 1
        level = logging.WARNING if self._failures == 1 else logging.DEBUG
        c = self._config
        log.log(level, "cannot reach the broker at %s:%d; retrying", c.host, c.port)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected.clear()
        if self._stopping:
            log.info("disconnected from the broker: %s", reason_code)
        else:
            log.warning("disconnected from the broker: %s; paho reconnects", reason_code)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        refused = [str(rc) for rc in reason_codes if rc.is_failure]
        if refused:
            log.error("broker refused %d subscriptions: %s", len(refused), ", ".join(refused))

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            # MQTT topics are UTF-8; ingest rejects this one as bad_topic and the hub acks it.
            topic = "<topic is not UTF-8>"
        self._inbox.put(
            Inbound(topic, bytes(message.payload), message.mid, message.qos, self._connection)
        )
