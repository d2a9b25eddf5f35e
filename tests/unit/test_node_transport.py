"""The node's MQTT adapter: what it subscribes on every connect (no broker: paho's callback is
called directly with a recording client)."""

from __future__ import annotations

from dataclasses import dataclass, field

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from edge_node.delivery.transport import Connected, MqttSettings, NodeTransport


@dataclass
class RecordingClient:
    calls: list[tuple[str, str]] = field(default_factory=list)

    def subscribe(self, topic: str, qos: int = 0) -> None:
        self.calls.append(("subscribe", topic))

    def unsubscribe(self, topic: str) -> None:
        self.calls.append(("unsubscribe", topic))


def transport() -> NodeTransport:
    settings = MqttSettings(
        host="127.0.0.1", port=1883, client_id="pump-01", username="pump-01", password=""
    )
    return NodeTransport(settings, "edgeml/v1/pump-01/status", b"", ["edgeml/v1/pump-01/cmd"])


def connect(t: NodeTransport, client: RecordingClient) -> None:
    ok = ReasonCode(PacketTypes.CONNACK, "Success")
    t._on_connect(client, None, mqtt.ConnectFlags(session_present=True), ok, None)  # type: ignore[arg-type]


def test_every_connect_subscribes_again_and_drops_stale_topics() -> None:
    t = transport()
    t.subscribe("edgeml/v1/models/pump/2/+")
    t.unsubscribe("edgeml/v1/models/pump/1/+")  # left in a persistent session by a crash
    client = RecordingClient()
    connect(t, client)
    assert client.calls == [
        ("unsubscribe", "edgeml/v1/models/pump/1/+"),
        ("subscribe", "edgeml/v1/models/pump/2/+"),
        ("subscribe", "edgeml/v1/pump-01/cmd"),
    ]
    assert t.events.get_nowait() == Connected(session_present=True)
    again = RecordingClient()
    connect(t, again)
    assert again.calls == [
        ("subscribe", "edgeml/v1/models/pump/2/+"),
        ("subscribe", "edgeml/v1/pump-01/cmd"),
    ]
