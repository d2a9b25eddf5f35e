"""Client ids are bound to accounts: no node's password can take another client's session.

Checked on the real broker with the project's config, where the dynamic security plugin
holds the node accounts with their client ids (mosquitto/dynsec_clients.py). "The victim keeps
its session" is checked by what it still receives and by its disconnect list: a takeover
would end its connection.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from tests.broker import Broker
from tests.integration.processes import Hub, wait_for
from tests.mqtt_clients import close, mqtt_client, publish, receive_until, state, subscribe

pytestmark = pytest.mark.integration

NOT_AUTHORIZED = "Not authorized"
TAKEN_OVER = "another client is using client id"


@pytest.fixture
def hub(broker: Broker) -> Iterator[mqtt.Client]:
    """The hub under its usual client id, with a persistent session, reading the whole tree."""
    client = mqtt_client(broker, "hub", "cloud-hub", clean_start=False, session_expiry=60)
    assert subscribe(client, "edgeml/v1/#").value == 1
    yield client
    close(client)


@pytest.mark.parametrize("stolen_id", ["cloud-hub", "node-b"])
def test_node_credentials_with_anothers_client_id_are_refused(
    broker: Broker, hub: mqtt.Client, stolen_id: str
) -> None:
    victim = mqtt_client(broker, "node-b")  # node-b, connected under its own id
    try:
        with pytest.raises(ConnectionRefusedError, match=NOT_AUTHORIZED):
            mqtt_client(broker, "pump-1", stolen_id, clean_start=False, session_expiry=60)
        # Both victims are still connected and still get what is theirs.
        assert not publish(victim, "edgeml/v1/node-b/result", b"for the hub").is_failure
        assert receive_until(hub, "edgeml/v1/node-b/result")[-1].payload == b"for the hub"
        assert not subscribe(victim, "edgeml/v1/node-b/cmd").is_failure
        assert not publish(hub, "edgeml/v1/node-b/cmd", b"for node-b").is_failure
        assert receive_until(victim, "edgeml/v1/node-b/cmd")[-1].payload == b"for node-b"
        assert state(victim).disconnects == []
    finally:
        close(victim)
    assert state(hub).disconnects == []


def test_a_node_connects_under_its_own_id_only(broker: Broker) -> None:
    own = mqtt_client(broker, "pump-2", "pump-2")
    close(own)
    assert not state(own).connack.is_failure  # type: ignore[union-attr]
    with pytest.raises(ConnectionRefusedError, match=NOT_AUTHORIZED):
        mqtt_client(broker, "pump-2", "pump-2-second")


def test_two_hubs_with_one_identity_say_so_in_their_logs(broker: Broker, tmp_path: Path) -> None:
    first = Hub(broker, tmp_path / "hub-1", client_id="hub-twice")
    second: Hub | None = None
    try:
        first.wait_ready()
        second = Hub(broker, tmp_path / "hub-2", client_id="hub-twice")
        for hub in (first, second):
            wait_for(_says(hub, TAKEN_OVER), 20.0, "a takeover line", hub)
        line = next(x for x in first.output(400).splitlines() if TAKEN_OVER in x)
        assert "ERROR" in line and "'hub-twice'" in line
    finally:
        if second is not None:
            second.stop()
        first.stop()


def _says(hub: Hub, text: str) -> Callable[[], bool]:
    return lambda: text in hub.output(400)
