"""The cost of end-to-end receipts: bytes on the wire against the nodes' own traffic, measured
on a live stream, and CPU per receipt at the hub and per confirmed message at the node, against
the PUBACK-only deletion they replace, measured in the same run.

    .venv/bin/python bench/receipts.py [--nodes 3] [--seconds 30] [--speed 200]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cloud_hub.ingest.dedupe import Deduper  # noqa: E402
from cloud_hub.ingest.receipts import ReceiptPacer, receipt  # noqa: E402
from edge_node.delivery.outbox import Outbox, Priority  # noqa: E402
from schemas.codec import encode  # noqa: E402
from tests.chaos import Fleet, make_model_and_csv  # noqa: E402


def wire(nodes: int, seconds: float, speed: float) -> None:
    """Bytes and messages per topic kind while ``nodes`` stream, counted by a tap."""
    counts: Counter[str] = Counter()
    size: Counter[str] = Counter()
    lock = threading.Lock()

    def on_message(_c: mqtt.Client, _u: object, m: mqtt.MQTTMessage) -> None:
        kind = m.topic.rsplit("/", 1)[-1]
        with lock:
            counts[kind] += 1
            size[kind] += len(m.payload) + len(m.topic) + 4  # + fixed header, packet id

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        fleet = Fleet(work, nodes, make_model_and_csv(work, int(seconds * speed)), speed=speed)
        tap = mqtt.Client(CallbackAPIVersion.VERSION2, "tap", protocol=mqtt.MQTTv5)
        tap.username_pw_set("hub", fleet.broker.users["hub"])
        tap.on_message = on_message
        tap.on_connect = lambda c, *_: c.subscribe("edgeml/v1/#", qos=0)
        tap.connect(fleet.broker.host, fleet.broker.port)
        tap.loop_start()
        try:
            tally = fleet.finish("stream", timeout=seconds * 4 + 60)
        finally:
            tap.loop_stop()
    node_bytes = sum(v for k, v in size.items() if k not in ("receipt", "cmd"))
    node_msgs = sum(v for k, v in counts.items() if k not in ("receipt", "cmd"))
    print(f"{nodes} nodes x {seconds:.0f} s at {speed:.0f} readings/s: {dict(counts)}")
    print(
        f"receipts: {counts['receipt']} ({size['receipt']:,} bytes) for {node_msgs} node "
        f"messages ({node_bytes:,} bytes): {counts['receipt'] / max(node_msgs, 1):.2f} receipts "
        f"per message, {size['receipt'] / max(node_bytes, 1):.1%} of the node bytes; "
        f"{size['receipt'] / max(counts['receipt'], 1):.0f} bytes each"
    )
    print(f"(readings produced {tally.produced:,}, counted {tally.counted:,}, lost {tally.lost})")


def hub_cpu(streams: int = 100, rounds: int = 2000) -> None:
    """Microseconds per receipt: due ranges, pacing, the message and its encoding."""
    deduper, pacer = Deduper(), ReceiptPacer(0.0)
    seq = 0
    start = time.perf_counter()
    for r in range(rounds):
        for s in range(streams):
            deduper.observe(f"n{s}", "b", r)
        pacer.offer(deduper.take_due())
        for key, ranges in pacer.take(float(r)):
            encode(receipt(key, ranges, "hub", seq, 0.0))
            seq += 1
    per = (time.perf_counter() - start) / seq * 1e6
    base_start = time.perf_counter()
    d2 = Deduper()
    for r in range(rounds):
        for s in range(streams):
            d2.observe(f"n{s}", "b", r)
    base = (time.perf_counter() - base_start) / seq * 1e6
    print(
        f"hub: {per - base:.1f} us of receipt work per receipt (dedupe alone {base:.1f} us "
        f"per message); at one receipt per stream per 0.5 s: {2 * (per - base):.0f} us/s "
        "per streaming node"
    )


def node_cpu(work: Path, n: int = 20_000, batch: int = 50) -> None:
    """Microseconds per message: deletion by receipt ranges against deletion by ids."""

    def fill(box: Outbox) -> list[int]:
        return [
            i for i in (
                box.put("t", "result", b"x" * 300, Priority.DATA, boot="b", seq=s)
                for s in range(n)
            ) if i is not None
        ]  # fmt: skip

    by_id = Outbox(work / "ids.db", max_bytes=1 << 30)
    ids = fill(by_id)
    start = time.perf_counter()
    for i in range(0, n, batch):
        by_id.remove(ids[i : i + batch])
    ids_us = (time.perf_counter() - start) / n * 1e6
    by_range = Outbox(work / "ranges.db", max_bytes=1 << 30)
    fill(by_range)
    start = time.perf_counter()
    for i in range(0, n, batch):
        by_range.confirm("b", [(0, i + batch)])  # cumulative, as receipts are
    range_us = (time.perf_counter() - start) / n * 1e6
    print(
        f"node: deleting by receipt {range_us:.1f} us per message vs {ids_us:.1f} us by PUBACK "
        f"ids (batches of {batch}): {range_us / ids_us:.2f} x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--speed", type=float, default=200.0)
    args = parser.parse_args()
    hub_cpu()
    with tempfile.TemporaryDirectory() as tmp:
        node_cpu(Path(tmp))
    wire(args.nodes, args.seconds, args.speed)


if __name__ == "__main__":
    main()
