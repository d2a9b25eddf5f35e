"""The seeded fuzz run of tests/unit/test_fuzz.py against a real ``cloud-hub serve`` through
Mosquitto: hub memory (RSS) before and after, rejects by reason from /metrics, and the readings
counted before and after every applied payload is sent again.

    .venv/bin/python bench/fuzz.py [--payloads 20000] [--seed 20000] [--replays 3]
"""

from __future__ import annotations

import argparse
import random
import secrets
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.broker import Broker  # noqa: E402
from tests.integration.processes import Hub, wait_for  # noqa: E402
from tests.mqtt_clients import close, mqtt_client  # noqa: E402
from tests.unit.test_fuzz import NODES, _golden, mutate  # noqa: E402


def _rss_mb(hub: Hub) -> float:
    return float(psutil.Process(hub.popen.pid).memory_info().rss) / 1e6


def _rejects(hub: Hub) -> Counter[str]:
    out: Counter[str] = Counter()
    for (name, labels), value in hub.samples().items():
        if name == "edgeml_rejected_messages_total":
            out[dict(labels)["reason"]] += int(value)
    return out


def _settled(hub: Hub) -> float:
    """Readings counted once the hub has handled everything (no change for 2 s)."""
    last, since = -1.0, time.monotonic()
    while time.monotonic() - since < 2.0:
        time.sleep(0.25)
        now = _readings(hub) + sum(_rejects(hub).values())
        if now != last:
            last, since = now, time.monotonic()
    return _readings(hub)


def _readings(hub: Hub) -> float:
    return sum(hub.value("edgeml_readings_total", node=n) for n in NODES)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--payloads", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=20_000)
    parser.add_argument("--replays", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    golden = _golden()
    with tempfile.TemporaryDirectory() as tmp:
        users = {n: secrets.token_urlsafe(12) for n in ("hub", *NODES)}
        with Broker(Path(tmp) / "mq", users) as broker:
            hub = Hub(broker, Path(tmp) / "hub", client_id="hub-fuzz")
            clients = {n: mqtt_client(broker, n) for n in NODES}
            try:
                hub.wait_ready()
                wait_for(lambda: "connected to the broker" in hub.output(), 10, "hub", hub)
                before = _rss_mb(hub)
                sent: list[tuple[mqtt.Client, str, bytes]] = []
                for _ in range(args.payloads):
                    kind = rng.choice(sorted(golden))
                    topic, data = mutate(rng, kind, golden[kind], now=time.time())
                    # Each node may write only its own topics (the ACL drops the rest).
                    node = topic.split("/")[2] if topic.count("/") == 3 else NODES[0]
                    client = clients.get(node, clients[NODES[0]])
                    client.publish(topic, data, qos=1).wait_for_publish(10)
                    sent.append((client, topic, data))
                counted = _settled(hub)
                rejects = _rejects(hub)
                after = _rss_mb(hub)
                replays, rss = [], []
                for _ in range(args.replays):  # everything again: replays of the whole run
                    for sender, topic, data in sent:
                        sender.publish(topic, data, qos=1).wait_for_publish(10)
                    replays.append(_settled(hub))
                    rss.append(round(_rss_mb(hub), 1))
                alive = hub.alive()
            finally:
                for c in clients.values():
                    close(c)
                hub.stop()
    print(f"{args.payloads:,} mutated payloads (seed {args.seed}), then {args.replays} replays")
    print(f"rejects by reason: {dict(rejects.most_common())}")
    print(f"hub RSS (MB): {before:.1f} before, {after:.1f} after the run, after each replay {rss}")
    print(
        f"readings counted: {counted:,.0f} after the run, after each replay {replays} (a replay "
        "may apply a message the first pass refused as implausible that is plausible now; it is "
        "still counted once)"
    )
    print(f"hub still running: {alive}")


if __name__ == "__main__":
    main()
