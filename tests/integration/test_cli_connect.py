"""A command started while the broker restarts still reaches the node."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.broker import Broker
from tests.integration import models
from tests.integration.processes import Hub, Node, node_config, wait_for

pytestmark = pytest.mark.integration


def test_ping_waits_for_a_restarting_broker(fresh_broker: Broker, tmp_path: Path) -> None:
    model = models.train(tmp_path / "v1", "1", slice(0, 3000))
    config = node_config(
        tmp_path / "pump-1.toml",
        node="pump-1",
        broker=fresh_broker,
        model_dir=model,
        source='kind = "sim"\nrate_hz = 10\n',
    )
    node = Node(config, exit_when_drained=False)
    hub = Hub(fresh_broker, tmp_path / "hub", client_id="hub-cli-connect")
    try:
        hub.wait_ready()
        # Commands go only to nodes whose birth the broker holds (or with --queue).
        wait_for(
            lambda: hub.value("edgeml_node_up", node="pump-1", group="ungrouped") == 1,
            30,
            "pump-1 up",
            hub,
        )
        assert hub.cli("ping", "--node", "pump-1", "--timeout", "20").returncode == 0
        fresh_broker.stop()
        # --queue: the restarted broker may not hold pump-1's birth again before pump-1 is back.
        ping = hub.cli_async("ping", "--node", "pump-1", "--timeout", "30", "--queue")
        time.sleep(2.0)
        assert ping.poll() is None, "the CLI gave up while the broker was away"
        fresh_broker.start()
        assert ping.wait(40) == 0
    finally:
        node.stop()
        hub.stop()
