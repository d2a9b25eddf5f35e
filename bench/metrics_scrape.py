"""Time of one /metrics scrape of the hub's collector at fleet scale, in-process.

Builds a fleet of N nodes (default 10,000) from the sample messages (status, two result
batches with a gap between them, an event, telemetry and a drift report each) through the
hub's ingest, then renders the registry with ``generate_latest`` with ``per_node`` true and
false: lines, bytes and seconds (best of ``--rounds``), and the ratio of the two.

    .venv/bin/python bench/metrics_scrape.py [--nodes 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
from prometheus_client import generate_latest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cloud_hub.ingest.dedupe import Deduper  # noqa: E402
from cloud_hub.ingest.fleet import FleetState  # noqa: E402
from cloud_hub.ingest.inbound import Ingest  # noqa: E402
from cloud_hub.ingest.metrics import HubCollector, new_registry  # noqa: E402
from schemas.codec import MESSAGE_TYPES, encode  # noqa: E402
from schemas.messages import ModelRef  # noqa: E402
from schemas.samples import SAMPLES  # noqa: E402
from schemas.topics import Kind, node_topic  # noqa: E402

KIND_OF = {typ: kind for kind, typ in MESSAGE_TYPES.items()}


def fleet(nodes: int, now: float) -> Ingest:
    """An ingest that heard from ``nodes`` nodes, each on one of 4 model versions."""
    ingest = Ingest(FleetState(offline_after_s=60.0), Deduper())
    for i in range(nodes):
        node = f"node-{i:05d}"
        model = ModelRef("pump-pca", str(i % 4))
        messages: list[Any] = [
            _msg("status", node),
            _msg("result", node, seq=30, first=0, model=model),
            _msg("result", node, seq=33, first=512, model=model),
            _msg("event", node, seq=34, state="open"),
            _msg("telemetry", node, seq=35, model=model),
            _msg("drift", node, seq=36, model=model),
        ]
        for message in messages:
            topic = node_topic(node, Kind(KIND_OF[type(message)]))
            ingest.handle(topic, encode(message), now)
    return ingest


def _msg(kind: str, node: str, **changes: Any) -> Any:
    return msgspec.structs.replace(SAMPLES[kind], node=node, **changes)


def scrape(ingest: Ingest, now: float, per_node: bool, rounds: int) -> tuple[int, int, float]:
    """(lines, bytes, best seconds) of ``generate_latest`` on the hub's collector."""
    registry = new_registry(HubCollector(ingest, clock=lambda: now, per_node=per_node))
    best, text = float("inf"), b""
    for _ in range(rounds):
        start = time.perf_counter()
        text = generate_latest(registry)
        best = min(best, time.perf_counter() - start)
    lines = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
    return lines, len(text), best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    now = time.time()
    start = time.perf_counter()
    ingest = fleet(args.nodes, now)
    print(f"{args.nodes:,} nodes built in {time.perf_counter() - start:.1f} s")
    full = scrape(ingest, now, True, args.rounds)
    lean = scrape(ingest, now, False, args.rounds)
    for label, (lines, size, seconds) in (("per_node = true ", full), ("per_node = false", lean)):
        print(f"{label}: {lines:9,} samples {size / 1e6:7.2f} MB {seconds:7.3f} s per scrape")
    print(f"per_node = false takes {lean[2] / full[2]:.3f} x the time of per_node = true")


if __name__ == "__main__":
    main()
