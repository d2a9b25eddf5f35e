"""Test MQTT clients (paho, MQTT v5) that record what they see, for real-broker tests."""

from __future__ import annotations

import logging
import queue
import ssl
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

if TYPE_CHECKING:
    from tests.broker import Broker

log = logging.getLogger(__name__)


def _client(client_id: str, username: str | None, password: str | None) -> mqtt.Client:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id=client_id, protocol=MQTTProtocolVersion.MQTTv5
    )
    if username is not None:
        client.username_pw_set(username, password)
    return client


def try_connect(
    host: str,
    port: int,
    username: str | None,
    password: str | None,
    timeout: float = 5.0,
    *,
    ca: Path | None = None,
) -> ReasonCode:
    """Connect once with MQTT v5 (TLS when ``ca`` is given), return the CONNACK reason code."""
    client = _client(f"probe-{uuid.uuid4().hex[:12]}", username, password)
    if ca is not None:
        client.tls_set(ca_certs=str(ca), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        # The chain is checked, not the name: the tests also run brokers named wrongly.
        client.tls_insecure_set(True)
    result: list[ReasonCode] = []
    client.on_connect = lambda _c, _u, _f, rc, _p: result.append(rc)
    client.connect(host, port, keepalive=10)
    deadline = time.monotonic() + timeout
    try:
        while not result:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no CONNACK from {host}:{port} within {timeout} s")
            if client.loop(timeout=0.05) != mqtt.MQTT_ERR_SUCCESS and not result:
                raise ConnectionError(f"{host}:{port} closed the connection before CONNACK")
    finally:
        client.disconnect()
    return result[0]


@dataclass
class ClientState:
    """What a test client's callbacks saw, from its first packet on."""

    messages: queue.Queue[mqtt.MQTTMessage] = field(default_factory=queue.Queue)
    acks: dict[int, ReasonCode] = field(default_factory=dict)
    subacks: dict[int, list[ReasonCode]] = field(default_factory=dict)
    changed: threading.Condition = field(default_factory=threading.Condition)
    connack: ReasonCode | None = None
    connack_properties: Properties | None = None
    session_present: bool = False
    disconnects: list[ReasonCode] = field(default_factory=list)

    def wait(self, predicate: Callable[[], object], timeout: float, what: str) -> None:
        """Wait until ``predicate()`` is true; raise TimeoutError naming ``what``."""
        with self.changed:
            if not self.changed.wait_for(predicate, timeout):
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")

    def attach(self, client: mqtt.Client) -> None:
        """Install the callbacks that fill this state (paho calls them on its loop thread)."""
        client.user_data_set(self)
        client.on_connect = self._on_connect
        client.on_disconnect = lambda _c, _u, _f, rc, _p: self._record(self.disconnects.append, rc)
        client.on_publish = lambda _c, _u, mid, rc, _p: self._record(self.acks.__setitem__, mid, rc)
        client.on_subscribe = lambda _c, _u, mid, rcs, _p: self._record(
            self.subacks.__setitem__, mid, rcs
        )
        client.on_message = lambda _c, _u, msg: self.messages.put(msg)

    def _record(self, update: Callable[..., None], *args: Any) -> None:
        with self.changed:
            update(*args)
            self.changed.notify_all()

    def _on_connect(
        self,
        _c: mqtt.Client,
        _u: object,
        flags: mqtt.ConnectFlags,
        rc: ReasonCode,
        props: Properties | None,
    ) -> None:
        with self.changed:
            self.connack, self.connack_properties = rc, props
            self.session_present = flags.session_present
            self.changed.notify_all()


def mqtt_client(
    broker: Broker,
    user: str,
    client_id: str | None = None,
    *,
    password: str | None = None,
    clean_start: bool = True,
    session_expiry: int = 0,
    timeout: float = 5.0,
) -> mqtt.Client:
    """An MQTT v5 client logged in as ``user``, connected, with its network loop started.

    Messages, PUBACK/SUBACK reason codes and disconnects land in ``state(client)``.
    """
    if client_id is None:
        # Node accounts are bound to their client id (the dynamic security plugin); the hub's
        # account may connect several times at once under ids of its own.
        client_id = f"{user}-{uuid.uuid4().hex[:8]}" if user == "hub" else user
    client = _client(
        client_id,
        user,
        broker.users[user] if password is None else password,
    )
    if broker.tls is not None:
        client.tls_set(ca_certs=str(broker.tls.ca), tls_version=ssl.PROTOCOL_TLS_CLIENT)
    st = ClientState()
    st.attach(client)
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = session_expiry
    client.connect(
        broker.host, broker.port, keepalive=30, clean_start=clean_start, properties=props
    )
    client.loop_start()
    try:
        st.wait(lambda: st.connack is not None, timeout, f"CONNACK for {user}")
        if st.connack is not None and st.connack.is_failure:
            raise ConnectionRefusedError(f"broker refused {user!r}: {st.connack}")
    except BaseException:
        close(client)
        raise
    return client


def state(client: mqtt.Client) -> ClientState:
    """The ClientState of a client made by ``mqtt_client``."""
    st = client.user_data_get()
    assert isinstance(st, ClientState), "client was not made by mqtt_client()"
    return st


def publish(
    client: mqtt.Client,
    topic: str,
    payload: bytes,
    *,
    qos: int = 1,
    retain: bool = False,
    timeout: float = 5.0,
) -> ReasonCode:
    """Publish and return the broker's PUBACK reason code."""
    st = state(client)
    info = client.publish(topic, payload, qos=qos, retain=retain)
    if info.rc != mqtt.MQTT_ERR_SUCCESS:
        raise RuntimeError(f"publish to {topic} failed locally: {mqtt.error_string(info.rc)}")
    st.wait(lambda: info.mid in st.acks, timeout, f"PUBACK for {topic}")
    return st.acks[info.mid]


def subscribe(client: mqtt.Client, topic: str, qos: int = 1, timeout: float = 5.0) -> ReasonCode:
    """Subscribe to one filter and return its SUBACK reason code."""
    st = state(client)
    rc, mid = client.subscribe(topic, qos=qos)
    if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
        raise RuntimeError(f"subscribe to {topic} failed locally: {mqtt.error_string(rc)}")
    st.wait(lambda: mid in st.subacks, timeout, f"SUBACK for {topic}")
    return st.subacks[mid][0]


def receive(client: mqtt.Client, count: int, timeout: float = 5.0) -> list[mqtt.MQTTMessage]:
    """The next ``count`` messages the client receives, whatever their topic."""
    messages = state(client).messages
    deadline = time.monotonic() + timeout
    got: list[mqtt.MQTTMessage] = []
    while len(got) < count:
        try:
            got.append(messages.get(timeout=max(deadline - time.monotonic(), 0.0)))
        except queue.Empty:
            raise TimeoutError(f"got {len(got)} of {count} messages in {timeout} s") from None
    return got


def receive_until(client: mqtt.Client, topic: str, timeout: float = 5.0) -> list[mqtt.MQTTMessage]:
    """Every message received up to and including the first one on ``topic``."""
    deadline = time.monotonic() + timeout
    seen: list[mqtt.MQTTMessage] = []
    while not seen or seen[-1].topic != topic:
        try:
            seen += receive(client, 1, max(deadline - time.monotonic(), 0.0))
        except TimeoutError:
            got = [m.topic for m in seen]
            raise TimeoutError(f"no message on {topic} within {timeout} s (got {got})") from None
    return seen


def close(client: mqtt.Client) -> None:
    """Disconnect and stop the network loop; harmless on an already closed client."""
    client.disconnect()
    client.loop_stop()
