"""Hub ingest rate: a backlog of result messages drained by ``cloud-hub serve`` against the
same backlog drained by a bare paho subscriber (the baseline), measured in the same run.

Both consumers hold a persistent session; the backlog is published while they are away, so the
clock measures only the consumer: it starts at the consumer's CONNACK and stops when the last
message is received (bare) or counted (hub, from /metrics). The hub runs with its durable state
(every message committed to hub.db before it is acked). Rounds alternate baseline and hub on
a fresh backlog each; the medians and the median of the per-round ratios are printed (the
machine is shared, so single rounds are noisy).

    .venv/bin/python bench/ingest.py [--messages 40000] [--nodes 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from schemas.codec import encode  # noqa: E402
from schemas.messages import ModelRef, ResultBatch  # noqa: E402
from schemas.packing import pack_f32, pack_flags  # noqa: E402
from schemas.topics import Kind, node_topic, subscription  # noqa: E402
from tests.broker import Broker  # noqa: E402
from tests.integration.processes import Hub, wait_for  # noqa: E402

READINGS = 8  # per message: the stream is about messages, not bytes


def _client(client_id: str, user: str, password: str) -> mqtt.Client:
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    client.username_pw_set(user, password)
    return client


def _connect(client: mqtt.Client, broker: Broker, clean: bool) -> None:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.SessionExpiryInterval = 3600
    client.connect(broker.host, broker.port, clean_start=clean, properties=props)


def publish_backlog(broker: Broker, nodes: list[str], per_node: int, boot: str) -> None:
    """Every node publishes ``per_node`` result batches at QoS 1 and waits for the PUBACKs."""
    scores = pack_f32(np.zeros(READINGS, dtype=np.float32))
    flags = pack_flags(np.zeros(READINGS, dtype=bool))
    for node in nodes:
        # Node accounts connect under their own id only (the broker binds them).
        client = _client(node, node, broker.users[node])
        client.max_inflight_messages_set(1000)
        _connect(client, broker, clean=True)
        client.loop_start()
        topic = node_topic(node, Kind.RESULT)
        last = None
        for seq in range(per_node):
            batch = ResultBatch(
                node=node, boot=boot, seq=seq, ts=time.time(), model=ModelRef("m", "1"),
                first=seq * READINGS, t0=0.0, period=1.0, n=READINGS, threshold=1.0,
                scores=scores, flags=flags,
            )  # fmt: skip
            last = client.publish(topic, encode(batch), qos=1)
            while len(client._out_messages) > 5000:  # keep paho's memory bounded
                time.sleep(0.001)
        assert last is not None
        last.wait_for_publish(60)
        client.disconnect()
        client.loop_stop()


def bare(broker: Broker, nodes: list[str], per_node: int, boot: str) -> float:
    """Messages/s a bare paho subscriber (auto-ack, no decode) drains from its session."""
    got = 0
    done = threading.Event()
    connected_at: list[float] = []

    def on_message(_c: mqtt.Client, _u: object, _m: mqtt.MQTTMessage) -> None:
        nonlocal got
        got += 1
        if got >= per_node * len(nodes):
            done.set()

    def on_connect(c: mqtt.Client, *_a: object) -> None:
        connected_at.append(time.perf_counter())
        c.subscribe(subscription(Kind.RESULT), qos=1)

    sub = _client("bare-bench", "hub", broker.users["hub"])
    sub.on_connect = on_connect
    _connect(sub, broker, clean=True)
    sub.loop_start()
    wait_for(lambda: bool(connected_at), 10, "bare subscriber")
    time.sleep(0.5)
    sub.disconnect()
    sub.loop_stop()
    connected_at.clear()
    publish_backlog(broker, nodes, per_node, boot)
    sub = _client("bare-bench", "hub", broker.users["hub"])
    sub.on_connect = on_connect
    sub.on_message = on_message
    _connect(sub, broker, clean=False)
    sub.loop_start()
    done.wait(300)
    elapsed = time.perf_counter() - connected_at[0]
    sub.disconnect()
    sub.loop_stop()
    return got / elapsed


def hub(broker: Broker, nodes: list[str], per_node: int, work: Path, boot: str) -> float:
    """Messages/s ``cloud-hub serve`` drains from its session, counted on its /metrics."""
    first = Hub(broker, work / "hub", client_id="hub-bench")
    first.wait_ready()
    wait_for(lambda: "connected to the broker" in first.output(), 10, "hub", first)
    first.stop()
    publish_backlog(broker, nodes, per_node, boot)
    second = Hub(broker, work / "hub", client_id="hub-bench")
    try:
        while "connected to the broker" not in second.output(5):
            time.sleep(0.005)
        start = time.perf_counter()
        want = per_node * len(nodes) * READINGS

        def counted() -> bool:
            try:
                total = second.value("edgeml_fleet_readings_total")
            except OSError:
                return False
            return total >= want

        wait_for(counted, 300, "every reading counted", second)
        return per_node * len(nodes) / (time.perf_counter() - start)
    finally:
        second.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=40_000)
    parser.add_argument("--nodes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    names = [f"ingest-{i}" for i in range(args.nodes)]
    per_node = args.messages // args.nodes
    bases, rates = [], []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        users = {n: secrets.token_urlsafe(12) for n in ("hub", *names)}
        with Broker(work / "mq", users) as broker:
            for r in range(args.rounds):
                bases.append(bare(broker, names, per_node, f"bare-{r}"))
                rates.append(hub(broker, names, per_node, work / f"round-{r}", f"hub-{r}"))
                print(f"round {r + 1}: bare {bases[-1]:8,.0f} msg/s, hub {rates[-1]:8,.0f} msg/s "
                      f"= {rates[-1] / bases[-1]:.2f} x")  # fmt: skip
    base, rate = statistics.median(bases), statistics.median(rates)
    ratio = statistics.median(h / b for h, b in zip(rates, bases, strict=True))
    print(f"bare paho subscriber (baseline): {base:10,.0f} msg/s (median)")
    print(f"cloud-hub serve ingest:          {rate:10,.0f} msg/s (median); "
          f"median ratio {ratio:.2f} x baseline")  # fmt: skip
    print(f"{per_node * args.nodes:,} result messages of {READINGS} readings from {args.nodes} "
          f"nodes per round, {args.rounds} rounds; cores: {os.cpu_count()}, shared by broker "
          "and consumer")  # fmt: skip


if __name__ == "__main__":
    main()
