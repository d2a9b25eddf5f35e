"""The hub's /metrics passes ``promtool check metrics`` once every family has samples."""

from __future__ import annotations

import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import msgspec
import pytest

from schemas.codec import encode
from schemas.samples import SAMPLES
from schemas.topics import NODE_TO_HUB, node_topic
from tests.broker import Broker
from tests.integration.processes import Hub, wait_for
from tests.mqtt_clients import close, mqtt_client, publish

pytestmark = pytest.mark.integration


def test_hub_metrics_pass_promtool(broker: Broker, tmp_path: Path) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool not found: scripts/setup.sh test installs the prometheus package")
    hub = Hub(broker, tmp_path / "hub", client_id="hub-promtool")
    node = mqtt_client(broker, "node-b")
    try:
        hub.wait_ready()
        wait_for(lambda: "connected to the broker" in hub.output(), 10, "hub connection", hub)
        now = time.time()
        for kind in NODE_TO_HUB:  # one of each kind, so every per-node family has a sample
            message = msgspec.structs.replace(SAMPLES[kind.value], node="node-b", ts=now)
            assert not publish(node, node_topic("node-b", kind), encode(message)).is_failure
        assert not publish(node, node_topic("node-b", NODE_TO_HUB[1]), b"\xc1").is_failure
        wait_for(
            lambda: hub.value("edgeml_node_up", node="node-b", group="ungrouped") == 1,
            10,
            "node-b",
            hub,
        )
        # The stream messages were committed and confirmed to node-b.
        wait_for(lambda: hub.value("edgeml_receipts_sent_total") >= 1, 10, "a receipt", hub)
        assert hub.value("edgeml_state_commits_total") >= 1
        url = f"http://127.0.0.1:{hub.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read()
    finally:
        close(node)
        hub.stop()
    assert b"edgeml_inference_latency_seconds" in text and b'reason="malformed"' in text
    result = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=60, check=False
    )
    assert result.returncode == 0, (result.stdout + result.stderr).decode()
