"""The hub's memory per node: RSS growth while N nodes with a realistic state are applied.

Each node sends what a SKAB-shaped node sends in its first minute: a birth with capabilities
(8 channels), ten result batches in order, an anomaly episode, telemetry (errors, source
health, sensor faults) and a drift report over 8 channels with their bin counts; each has its
own boot. The baseline is the same process before the fleet is built (imports, an empty hub
state), measured in the same run. RSS is read after a full garbage collection, before and after
one /metrics scrape (a scrape's text is freed, but the allocator may keep what it took).

    .venv/bin/python bench/hub_memory.py [--nodes 10000]
"""

from __future__ import annotations

import argparse
import gc
import secrets
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cloud_hub.ingest.dedupe import Deduper  # noqa: E402
from cloud_hub.ingest.fleet import FleetState  # noqa: E402
from cloud_hub.ingest.inbound import Ingest  # noqa: E402
from cloud_hub.ingest.metrics import HubCollector  # noqa: E402
from schemas.codec import MESSAGE_TYPES, encode  # noqa: E402
from schemas.messages import (  # noqa: E402
    Capabilities,
    ChannelDrift,
    ModelRef,
    ScoreStats,
)
from schemas.packing import pack_f32, pack_flags  # noqa: E402
from schemas.samples import SAMPLES  # noqa: E402
from schemas.topics import Kind, node_topic  # noqa: E402

KIND_OF = {typ: kind for kind, typ in MESSAGE_TYPES.items()}
CHANNELS = [f"sensor_{i}" for i in range(8)]
BATCH = 256


def node_messages(node: str, i: int) -> list[Any]:
    """What one node sends in its first minute, as decoded messages."""
    boot = secrets.token_hex(8)
    model = ModelRef("pump-pca", str(i % 4))
    env = {"node": node, "boot": boot}
    sample_caps: Capabilities = SAMPLES["status"].capabilities  # type: ignore[attr-defined]
    # Every node announces the memory it found free at start: no two capabilities are equal.
    free_mb = 1500.0 + 1000.0 * ((i * 7919) % 1000) / 1000 + i / 1e4
    caps = msgspec.structs.replace(
        sample_caps, channels=list(CHANNELS), group=f"site-{i % 20}", memory_available_mb=free_mb
    )
    out: list[Any] = [
        msgspec.structs.replace(SAMPLES["status"], **env, seq=0, capabilities=caps, models=[model])
    ]
    scores = pack_f32(np.ones(BATCH, dtype=np.float32))
    flags = pack_flags(np.zeros(BATCH, dtype=bool))
    result = SAMPLES["result"]
    for seq in range(10):
        first = seq * BATCH
        batch = {"model": model, "first": first, "n": BATCH, "scores": scores, "flags": flags}
        out.append(msgspec.structs.replace(result, **env, seq=seq, **batch))
    out.append(msgspec.structs.replace(SAMPLES["event"], **env, seq=10, model=model))
    telemetry = msgspec.structs.replace(
        SAMPLES["telemetry"], **env, seq=11, model=model,
        errors={"decode": 1, "model": 2}, sensor_faults={"sensor_3:stuck": 4},
    )  # fmt: skip
    out.append(telemetry)
    counts = [5, 10, 20, 30, 20, 10, 5, 0, 0, 0]
    channels = [
        ChannelDrift(channel=c, psi=0.01 * k, mean_shift_sd=0.1, mean=1.0, std=0.2, counts=counts,
                     n_eff=40.0, psi_null=0.1, psi_p=0.5, ks=0.05, wasserstein_sd=0.1, change=0.2)
        for k, c in enumerate(CHANNELS)
    ]  # fmt: skip
    score = ScoreStats(mean=1.1, p50=0.9, p95=3.0, p99=6.5, flagged_fraction=0.05, psi=0.2,
                       counts=counts, change=0.1)  # fmt: skip
    out.append(
        msgspec.structs.replace(
            SAMPLES["drift"], **env, seq=12, model=model, channels=channels, score=score
        )
    )
    return out


def commit(ingest: Ingest) -> None:
    """What the hub's commit takes from the state (cloud_hub.app.HubApp.commit), minus the
    store: the changed nodes and streams, and the receipts due."""
    ingest.fleet.take_dirty()
    ingest.deduper.take_dirty()
    ingest.take_profiles()
    ingest.take_healths()
    ingest.deduper.take_due()


def rss() -> int:
    gc.collect()
    return int(psutil.Process().memory_info().rss)


def scrape(ingest: Ingest, now: float) -> int:
    """Bytes of one /metrics text at the default settings."""
    collector = HubCollector(ingest, clock=lambda: now)
    render = getattr(collector, "render", None)
    if render is not None:
        return len(render())
    from prometheus_client import generate_latest

    from cloud_hub.ingest.metrics import new_registry

    return len(generate_latest(new_registry(collector)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=10_000)
    args = parser.parse_args()
    now = time.time()
    # Encoded once up front, so the messages' bytes are not part of what is measured.
    payloads = [
        (node_topic(m.node, Kind(KIND_OF[type(m)])), encode(m))
        for i in range(args.nodes)
        for m in node_messages(f"node-{i:05d}", i)
    ]
    ingest = Ingest(FleetState(offline_after_s=60.0), Deduper())
    base = rss()
    for i, (topic, payload) in enumerate(payloads):
        ingest.handle(topic, payload, now)
        if i % 500 == 499:
            commit(ingest)
    commit(ingest)
    built = rss()
    size = scrape(ingest, now)
    scraped = rss()
    n = args.nodes
    print(f"{n:,} nodes, {len(payloads):,} messages applied")
    print(f"baseline RSS (empty hub state):   {base / 1e6:8.1f} MB")
    print(f"after the fleet:                  {built / 1e6:8.1f} MB = "
          f"{(built - base) / n:7,.0f} bytes per node")  # fmt: skip
    print(f"after one scrape ({size / 1e6:.2f} MB text): {scraped / 1e6:8.1f} MB = "
          f"{(scraped - base) / n:7,.0f} bytes per node")  # fmt: skip


if __name__ == "__main__":
    main()
