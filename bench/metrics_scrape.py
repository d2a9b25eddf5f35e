"""Time of one /metrics scrape of the hub's collector at fleet scale, in-process.

Builds a fleet of N nodes (default 10,000) from the sample messages (status, two result
batches with a gap between them, an event, telemetry and a drift report each) through the
hub's ingest, then renders what /metrics serves (``HubCollector.render``) at the default
settings (health gauges per node, full detail for ``per_node_limit`` = 200 nodes, group and
model series) against the baseline of every node in full detail (``per_node_limit`` = N, what
``per_node = true`` meant before the bound), and with ``per_node = false``: lines, bytes and
seconds (median of ``--rounds``; wall and CPU time of the process: on a shared machine the
CPU time is what one free core would take), and the ratios.

    .venv/bin/python bench/metrics_scrape.py [--nodes 10000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import msgspec

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cloud_hub.ingest.dedupe import Deduper  # noqa: E402
from cloud_hub.ingest.fleet import FleetState  # noqa: E402
from cloud_hub.ingest.inbound import Ingest  # noqa: E402
from cloud_hub.ingest.metrics import HubCollector  # noqa: E402
from schemas.codec import MESSAGE_TYPES, encode  # noqa: E402
from schemas.messages import ModelRef  # noqa: E402
from schemas.samples import SAMPLES  # noqa: E402
from schemas.topics import Kind, node_topic  # noqa: E402

KIND_OF = {typ: kind for kind, typ in MESSAGE_TYPES.items()}


def fleet(nodes: int, now: float) -> Ingest:
    """An ingest that heard from ``nodes`` nodes in 20 groups, each on one of 4 model versions."""
    ingest = Ingest(FleetState(offline_after_s=60.0), Deduper())
    for i in range(nodes):
        node = f"node-{i:05d}"
        model = ModelRef("pump-pca", str(i % 4))
        messages: list[Any] = [
            _msg("status", node, capabilities=_caps(f"site-{i % 20}")),
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


def _caps(group: str) -> Any:
    return msgspec.structs.replace(SAMPLES["status"].capabilities, group=group)  # type: ignore[attr-defined]


def _msg(kind: str, node: str, **changes: Any) -> Any:
    return msgspec.structs.replace(SAMPLES[kind], node=node, **changes)


def scrape(
    ingest: Ingest, now: float, rounds: int, **settings: Any
) -> tuple[int, int, float, float]:
    """(lines, bytes, median wall s, median CPU s) of one /metrics text with these settings."""
    collector = HubCollector(ingest, clock=lambda: now, **settings)
    wall, cpu, text = [], [], b""
    for _ in range(rounds):
        start, start_cpu = time.perf_counter(), time.process_time()
        text = collector.render()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    lines = sum(1 for line in text.splitlines() if line and not line.startswith(b"#"))
    return lines, len(text), statistics.median(wall), statistics.median(cpu)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    now = time.time()
    start = time.perf_counter()
    ingest = fleet(args.nodes, now)
    print(f"{args.nodes:,} nodes built in {time.perf_counter() - start:.1f} s")
    full = scrape(ingest, now, args.rounds, per_node_limit=args.nodes)
    default = scrape(ingest, now, args.rounds)
    lean = scrape(ingest, now, args.rounds, per_node=False)
    for label, (lines, size, seconds, cpu) in (
        ("every node in detail (baseline)", full),
        ("defaults (limit 100)           ", default),
        ("per_node = false               ", lean),
    ):
        print(
            f"{label}: {lines:9,} samples {size / 1e6:7.2f} MB {seconds:7.3f} s "
            f"({cpu:.3f} s CPU) per scrape"
        )
    print(f"defaults take {default[3] / full[3]:.3f} x the baseline's CPU time; "
          f"per_node = false {lean[3] / full[3]:.3f} x")  # fmt: skip


if __name__ == "__main__":
    main()
