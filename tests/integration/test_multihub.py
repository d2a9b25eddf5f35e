"""Three hubs share one stream through a shared subscription and one PostgreSQL store; one is
killed (SIGKILL) mid-stream: nothing lost, nothing counted twice, and every hub's /metrics
shows the same, right fleet totals (bench/multihub.py runs the long version)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.broker import Broker
from tests.chaos import make_model_and_csv
from tests.integration.processes import wait_for
from tests.mqtt_clients import close, mqtt_client, publish, receive_until, subscribe
from tests.multihub import HubGroup

pytestmark = pytest.mark.integration

READINGS = 2400


def test_three_hubs_one_killed_mid_stream_lose_and_double_count_nothing(
    tmp_path: Path, pg_url: str
) -> None:
    source = make_model_and_csv(tmp_path, READINGS)
    group = HubGroup(tmp_path, pg_url, hubs=3, nodes=2, source=source, speed=300)
    try:
        group.start_nodes()
        # The broker spreads each node's results over the three hubs.
        wait_for(
            lambda: all(h.value("edgeml_messages_total", kind="result") > 5 for h in group.hubs),
            15,
            "every hub to apply results",
            *group.hubs,
        )
        group.kill_hub(1, frozen_s=1.5)
        drained_s = group.wait_drained(120)  # the counts are the test; draining took 20-66 s
        before = group.outcome()
        total = sum(before.counted.values())
        wait_for(
            lambda: group.outcome().fleet_totals == [total, total],
            10,
            "every live hub's /metrics to show the store's fleet total",
            *group.live_hubs(),
        )
        # The killed hub comes back to what its session queued: redeliveries, all dropped.
        group.restart_hub(1)
        wait_for(
            lambda: group.hubs[1].value("edgeml_duplicates_total") > 0,
            15,
            "the restarted hub to get its session's queue",
            group.hubs[1],
        )
        time.sleep(1.0)  # the rest of that queue, and one refresh of every hub
        after = group.outcome()
        redelivered = group.hubs[1].value("edgeml_duplicates_total")
    finally:
        group.close()
    print(f"\nmultihub kill test: drained {drained_s:.1f} s after the kill; {before}")
    print(f"after the restart ({redelivered:.0f} redeliveries dropped): {after}")
    for name in group.names:
        assert before.produced[name] >= READINGS
        assert (before.lost[name], before.double[name]) == (0, 0), name
        assert before.counted[name] == before.produced[name]
        assert after.counted[name] == before.counted[name], name
    assert after.fleet_totals == [total] * 3


def test_the_hub_shares_the_stream_and_a_node_cannot_read_others_through_a_share(
    broker: Broker,
) -> None:
    """The hub account needs no more than its `topic read edgeml/v1/#` line for `$share/...`;
    a node subscribing through a share still reads only its own topics."""
    hub = mqtt_client(broker, "hub")
    node_a = mqtt_client(broker, "node-a")
    node_b = mqtt_client(broker, "node-b")
    try:
        assert subscribe(hub, "$share/acl-test/edgeml/v1/+/result").value == 1
        subscribe(node_a, "$share/snoop/edgeml/v1/+/result")  # granted or not: nothing leaks
        assert subscribe(node_a, "edgeml/v1/node-a/cmd").value == 1
        assert not publish(node_b, "edgeml/v1/node-b/result", b"private").is_failure
        got = receive_until(hub, "edgeml/v1/node-b/result")
        assert got[-1].payload == b"private"
        # The broker keeps one sender's order: a leak would arrive before this marker.
        assert not publish(hub, "edgeml/v1/node-a/cmd", b"marker").is_failure
        seen = receive_until(node_a, "edgeml/v1/node-a/cmd")
        assert [m.topic for m in seen] == ["edgeml/v1/node-a/cmd"]
    finally:
        for client in (hub, node_a, node_b):
            close(client)
