"""The hub's MQTT clients; the only module of cloud_hub that imports paho.

The session is persistent (``clean_start=False`` plus a session expiry), so QoS 1 messages
that arrive while the hub is down wait in the broker. Acks are manual: a message is
acknowledged only after the hub applied it, so a crash in between means a redelivery
(which dedupe drops), never a loss. Callbacks only hand off to a queue and never raise:
paho re-raises callback exceptions inside its network loop.

:class:`CommandClient` is the CLI's short-lived connection: its own client id and a clean
session, so it never takes over (and so never ends) the session of ``cloud-hub serve``.
"""

from __future__ import annotations

import logging
import queue
import ssl
import struct
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, Protocol

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_exponential

from cloud_hub.config import MqttConfig
from schemas.connection import (
    ConnectionReport,
    Flapping,
    broker_url,
    explain,
    refused_by_broker,
    taken_over,
)
from schemas.topics import NODE_TO_HUB, Kind, subscription

log = logging.getLogger(__name__)

# Unacked QoS 1 deliveries the broker may have outstanding to the hub: this bounds the
# inbound queue (and so the hub's memory) while the main loop catches up.
RECEIVE_MAXIMUM = 1000
# Outgoing QoS 1 messages paho may hold (in flight or waiting): bounds the memory a large
# deploy takes; beyond it publish says MQTT_ERR_QUEUE_SIZE and the chunk server retries later.
MAX_QUEUED = 256
MAX_INFLIGHT = 64
# A PUBACK without reason code or properties: fixed header, remaining length 2, packet id.
_PUBACK = struct.Struct("!BBH")


class TransportError(RuntimeError):
    """paho refused a publish; the message names the topic and paho's reason."""


class Inbound(NamedTuple):
    """One delivered message; ``connection`` tells which connection must ack it.

    A named tuple: one is made per message on paho's network thread, where a frozen dataclass
    costs several times as much."""

    topic: str
    payload: bytes
    mid: int
    qos: int
    connection: int


class Inbox(Protocol):
    """Where the network thread hands messages over (a queue.SimpleQueue in the hub)."""

    def put(self, item: Inbound) -> None: ...


class HubTransport:
    """Subscribes to every node-to-hub kind and hands messages to ``inbox``."""

    def __init__(
        self,
        config: MqttConfig,
        password: str,
        inbox: Inbox,
        receive_maximum: int = RECEIVE_MAXIMUM,
    ) -> None:
        self.connected = threading.Event()
        self._config = config
        self._inbox = inbox
        self._connection = 0
        self._stopping = False
        self.takeovers = 0  # times another client with this client id took the session
        self._flapping = Flapping()
        # Why the hub is not connected, at WARNING at most once a minute (network thread only).
        self._report = ConnectionReport(broker_url(config.host, config.port, _tls(config)))
        self._receive_maximum = receive_maximum
        client = _new_client(config, password, config.client_id, manual_ack=True)
        client.max_queued_messages_set(MAX_QUEUED)
        client.max_inflight_messages_set(MAX_INFLIGHT)
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
        log.info("connecting to %s as %s", self._report.url, c.username)
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

    def ack_many(self, messages: list[Inbound]) -> None:
        """Acknowledge messages applied together, as one write of their PUBACKs.

        paho's ``ack`` queues one packet per message and wakes its network thread for each
        (a socket write per ack): at thousands of messages a second that is a large share of
        the hub's time. A PUBACK with reason "success" is 4 bytes (MQTT 5 lets the reason
        code and properties be left out), so the PUBACKs of a commit go to paho's out queue
        as one buffer, written at once. Only QoS 1 messages of the current connection: packet
        ids belong to a connection (see :meth:`ack`).
        """
        connection = self._connection
        mids = [m.mid for m in messages if m.qos == 1 and m.connection == connection]
        others = [m for m in messages if m.qos > 1]
        if mids:
            data = b"".join(_PUBACK.pack(mqtt.PUBACK, 2, mid) for mid in mids)
            rc = self._client._packet_queue(mqtt.PUBACK, data, 0, 0)
            if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
                log.warning("acks of %d messages failed: %s", len(mids), mqtt.error_string(rc))
        for message in others:
            self.ack(message)

    def publish(
        self, topic: str, payload: bytes, qos: int = 1, retain: bool = False
    ) -> mqtt.MQTTMessageInfo:
        """Queue a message for the broker; TransportError if paho refuses it."""
        info = self._client.publish(topic, payload, qos=qos, retain=retain)
        # NO_CONN still queues a QoS > 0 message: paho sends it once reconnected.
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise TransportError(f"publish to {topic} refused: {mqtt.error_string(info.rc)}")
        return info

    def offer(
        self, topic: str, payload: bytes, qos: int = 1
    ) -> Literal["queued", "full", "refused"]:
        """Hand a message to paho without waiting: ``full`` means try again later.

        QoS 1 is queued while the hub is offline; QoS 0 (receipts) is not sent then, so it is
        ``full`` too and comes back at the next round."""
        info = self._client.publish(topic, payload, qos=qos, retain=False)
        if info.rc == MQTTErrorCode.MQTT_ERR_SUCCESS:
            return "queued"
        if info.rc == MQTTErrorCode.MQTT_ERR_NO_CONN:
            return "queued" if qos else "full"
        if info.rc == MQTTErrorCode.MQTT_ERR_QUEUE_SIZE:
            return "full"
        log.error("publish to %s refused: %s", topic, mqtt.error_string(info.rc))
        return "refused"

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
            self._warn(refused_by_broker(str(reason_code)))
            return
        if (line := self._report.connected(time.monotonic())) is not None:
            log.info("%s", line)
        self._connection += 1
        self._flapping.connected(time.monotonic())
        log.info("connected to the broker (session present: %s)", flags.session_present)
        group = self._config.share_group
        topics = [(hub_filter(kind, group), SubscribeOptions(qos=1)) for kind in NODE_TO_HUB]
        if group and flags.session_present:
            # A session from before the group holds the plain filters: leave them, or this
            # hub would receive every message of those kinds on top of its share.
            client.unsubscribe([subscription(k) for k in NODE_TO_HUB if k is not Kind.STATUS])
        result, _mid = client.subscribe(topics)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS:
            log.error("subscribe failed: %s", mqtt.error_string(result))
        self.connected.set()

    def _on_connect_fail(self, client: mqtt.Client, userdata: Any) -> None:
        # paho calls this inside its `except OSError`, so the exception is still at hand.
        c = self._config
        self._warn(explain(sys.exc_info()[1], c.host, c.port, c.tls_ca))

    def _warn(self, why: str) -> None:
        line = self._report.failed(why, time.monotonic())
        log.log(logging.DEBUG if line is None else logging.WARNING, "%s", line or why)

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        self.connected.clear()
        if self._flapping.dropped(time.monotonic(), reason_code.value):
            self.takeovers += 1
            log.error(
                "%s", taken_over(self._report.url, self._config.client_id, self._flapping.run)
            )
        elif self._stopping:
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


def hub_filter(kind: Kind, share_group: str) -> str:
    """The filter the hub subscribes ``kind`` with: ``$share/<group>/edgeml/v1/+/<kind>`` in a
    group, so the broker hands each message to one hub of it. Status stays a plain filter on
    every hub: it is retained (a shared subscription gets no retained messages) and it is
    state, applied by newest ``ts``, so every hub applying it changes nothing."""
    plain = subscription(kind)
    if not share_group or kind is Kind.STATUS:
        return plain
    return f"$share/{share_group}/{plain}"


def _new_client(
    config: MqttConfig, password: str, client_id: str, *, manual_ack: bool
) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=client_id,
        protocol=mqtt.MQTTv5,
        manual_ack=manual_ack,
    )
    client.username_pw_set(config.username, password or None)
    if _tls(config):
        client.tls_set(
            ca_certs=config.tls_ca or None,
            certfile=config.tls_cert or None,
            keyfile=config.tls_key or None,
            tls_version=ssl.PROTOCOL_TLS_CLIENT,
        )
    return client


def _tls(config: MqttConfig) -> bool:
    return bool(config.tls_ca or config.tls_cert)


@dataclass(frozen=True, slots=True)
class Received:
    """One message delivered to the CLI."""

    topic: str
    payload: bytes


class CommandClient:
    """A short-lived connection for one CLI command: publish commands, receive answers.

    Subscriptions are renewed on every (re)connection, since a clean session forgets them.
    """

    def __init__(self, config: MqttConfig, password: str, client_id: str) -> None:
        self.client_id = client_id
        self._config = config
        self._inbox: queue.Queue[Received] = queue.Queue()
        self._cond = threading.Condition()
        self._connected = False
        self._refusal = ""
        self._topics: list[tuple[str, int]] = []
        self._subacks: dict[int, list[ReasonCode]] = {}
        self._pubacks: dict[int, ReasonCode] = {}
        client = _new_client(config, password, client_id, manual_ack=False)
        client.reconnect_delay_set(min_delay=1, max_delay=5)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_subscribe = self._on_subscribe
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        self._client = client

    def connect(self, timeout: float) -> None:
        """Connect with a clean session; TransportError if refused or not within ``timeout``."""
        c = self._config
        # A broker that is restarting refuses connections for a few seconds: keep trying, with
        # backoff, for the whole timeout. TLS failures will not heal by themselves.
        retrying = Retrying(
            stop=stop_after_delay(timeout),
            wait=wait_exponential(multiplier=0.25, max=4.0),
            retry=retry_if_exception(
                lambda e: isinstance(e, OSError) and not isinstance(e, ssl.SSLError)
            ),
            reraise=True,
        )
        try:
            for attempt in retrying:
                with attempt:
                    self._client.connect(c.host, c.port, keepalive=c.keepalive_s, clean_start=True)
        except OSError as exc:
            url = broker_url(c.host, c.port, _tls(c))
            raise TransportError(
                f"cannot connect to {url}: {explain(exc, c.host, c.port, c.tls_ca)}"
            ) from None
        self._client.loop_start()
        with self._cond:
            self._cond.wait_for(lambda: self._connected or bool(self._refusal), timeout)
            if self._refusal:
                raise TransportError(f"the broker refused {c.username}: {self._refusal}")
            if not self._connected:
                raise TransportError(f"no answer from the broker at {c.host}:{c.port}")

    def subscribe(self, topics: list[tuple[str, int]], timeout: float) -> None:
        """Subscribe (and re-subscribe after a reconnection); TransportError if refused."""
        self._topics += topics
        result, mid = self._client.subscribe(topics)
        if result != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise TransportError(f"subscribe failed: {mqtt.error_string(result)}")
        with self._cond:
            if not self._cond.wait_for(lambda: mid in self._subacks, timeout):
                raise TransportError(f"the broker did not confirm the subscription to {topics}")
            codes = self._subacks.pop(mid)
        refused = [t for (t, _), rc in zip(topics, codes, strict=False) if rc.is_failure]
        if refused:
            raise TransportError(f"the broker refused subscriptions to {', '.join(refused)}")

    def publish(self, topic: str, payload: bytes, timeout: float) -> None:
        """Publish at QoS 1, never retained, and wait for the broker's PUBACK."""
        info = self._client.publish(topic, payload, qos=1, retain=False)
        if info.rc not in (MQTTErrorCode.MQTT_ERR_SUCCESS, MQTTErrorCode.MQTT_ERR_NO_CONN):
            raise TransportError(f"publish to {topic} refused: {mqtt.error_string(info.rc)}")
        with self._cond:
            if not self._cond.wait_for(lambda: info.mid in self._pubacks, timeout):
                raise TransportError(f"the broker did not acknowledge the publish to {topic}")
            reason = self._pubacks.pop(info.mid)
        if reason.is_failure:
            raise TransportError(f"the broker refused the publish to {topic}: {reason}")

    def receive(self, timeout: float) -> Received | None:
        """The next delivered message, or None after ``timeout`` seconds."""
        try:
            return self._inbox.get(timeout=timeout)
        except queue.Empty:
            return None

    def close(self) -> None:
        """Disconnect (the clean session ends with it) and stop the network thread."""
        self._client.disconnect()
        self._client.loop_stop()

    # paho callbacks (network thread): record, notify, never raise.

    def _on_connect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.ConnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            if reason_code.is_failure:
                self._refusal = str(reason_code)
            else:
                self._connected = True
                if self._topics:
                    client.subscribe(list(self._topics))
            self._cond.notify_all()

    def _on_disconnect(
        self,
        client: mqtt.Client,
        userdata: Any,
        flags: mqtt.DisconnectFlags,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            self._connected = False
        log.debug("disconnected from the broker: %s", reason_code)

    def _on_subscribe(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_codes: list[ReasonCode],
        properties: Properties | None,
    ) -> None:
        with self._cond:
            self._subacks[mid] = reason_codes
            self._cond.notify_all()

    def _on_publish(
        self,
        client: mqtt.Client,
        userdata: Any,
        mid: int,
        reason_code: ReasonCode,
        properties: Properties | None,
    ) -> None:
        with self._cond:
            self._pubacks[mid] = reason_code
            self._cond.notify_all()

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:
            return  # not a topic this client subscribed to
        self._inbox.put(Received(topic, bytes(message.payload)))
