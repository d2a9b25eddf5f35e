"""Bytes on the wire per reading and per node per minute, envelope included, as measured.

(1) Result batches of 256 readings and of 50 (a 50 Hz node with 1 s batches) encoded by the
node's own code from SKAB readings scored by a trained model: MessagePack payload (envelope
fields included) and the MQTT PUBLISH packet around it (fixed header, topic, packet id,
properties), per reading. Baseline: the packed scores and flags alone, 4 bytes + 1 bit per
reading; the ratio is what the message costs over them.

(2) A real ``edge-node run`` at ``--rate-hz`` with default timers and a real hub confirming
its messages: every message of the node's topics (and the hub's receipts to it) counted at a
subscriber over ``--seconds`` after ``--warmup-s``, by kind, per minute.

    .venv/bin/python bench/wire.py [--seconds 120] [--rate-hz 50] [--skab-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import queue
import secrets
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cloud_hub.models.onnx_export import save_model, train_model  # noqa: E402
from cloud_hub.models.trainer import TrainConfig  # noqa: E402
from edge_node.delivery.outgoing import Sequencer, result_message  # noqa: E402
from edge_node.scoring.batcher import PendingBatch, ResultBatcher  # noqa: E402
from edge_node.scoring.events import EpisodeConfig  # noqa: E402
from edge_node.scoring.pipeline import Pipeline  # noqa: E402
from edge_node.scoring.runtime import ModelRuntime  # noqa: E402
from edge_node.sources.base import Block  # noqa: E402
from schemas.codec import encode  # noqa: E402
from schemas.readings_csv import read_csv  # noqa: E402
from schemas.topics import Kind, node_topic  # noqa: E402
from tests.broker import Broker  # noqa: E402
from tests.integration.processes import Hub  # noqa: E402
from tests.mqtt_clients import close, mqtt_client, state, subscribe  # noqa: E402
from tests.node_process import launch_node, train_sim_model  # noqa: E402

DEFAULT_SKAB = Path(os.environ.get("SKAB_DIR", REPO.parent / "shared" / "data" / "skab"))
RAW_BYTES = 4 + 1 / 8  # a float32 score and a flag bit
NODE = "pump-0042"  # a node id of a typical length


def publish_bytes(topic: str, payload: int) -> int:
    """Size of an MQTT v5 QoS 1 PUBLISH without properties carrying ``payload`` bytes."""
    remaining = 2 + len(topic.encode()) + 2 + 1 + payload  # topic, packet id, properties
    length_bytes = 1 if remaining < 128 else 2 if remaining < 16384 else 3
    return 1 + length_bytes + remaining


def batches(skab: Path, per_batch: int) -> list[PendingBatch]:
    """SKAB valve1 readings scored by a model trained on the healthy recording, in batches."""
    healthy = read_csv(skab / "anomaly-free" / "anomaly-free.csv")
    files = sorted((skab / "valve1").glob("*.csv"), key=lambda p: int(p.stem))
    values = np.concatenate([read_csv(f).values for f in files]).astype(np.float32)
    with tempfile.TemporaryDirectory() as tmp:
        onnx, manifest = train_model(
            healthy.values[:3000],
            healthy.channels,
            name="pump-pca",
            version="3",
            trained_by="bench",
            config=TrainConfig(),
            now=time.time(),
        )
        save_model(Path(tmp) / "m", onnx, manifest)
        runtime = ModelRuntime.load(Path(tmp) / "m", sensors=healthy.channels)
    pipeline = Pipeline(runtime, healthy.channels, ResultBatcher(per_batch, 1e9), EpisodeConfig())
    out: list[PendingBatch] = []
    t0 = 1_764_547_200.0
    for start in range(0, len(values), per_batch):
        rows = values[start : start + per_batch]
        t = t0 + start * 0.02
        out += pipeline.process(Block(t, 0.02, rows), t, time.perf_counter).batches
    return [b for b in out if b.n == per_batch]


def per_reading(skab: Path) -> None:
    seq = Sequencer(NODE, secrets.token_hex(4))
    topic = node_topic(NODE, Kind.RESULT)
    print("result batches (payload with envelope; MQTT PUBLISH with topic and header):")
    for n, what in ((256, "256-reading batches"), (50, "50 Hz with 1 s batches")):
        sizes = [len(encode(result_message(seq.take(time.time()), b))) for b in batches(skab, n)]
        payload = float(np.mean(sizes))
        packet = float(np.mean([publish_bytes(topic, s) for s in sizes]))
        print(
            f"  {what:24s}: payload {payload / n:.2f} B/reading, packet {packet / n:.2f} "
            f"B/reading = {packet / n / RAW_BYTES:.2f} x baseline (packed scores and flags, "
            f"{RAW_BYTES:.3f} B/reading; {len(sizes)} batches, {payload:.0f} B each)"
        )


def per_minute(seconds: float, warmup_s: float, rate_hz: float) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = train_sim_model(work / "model")
        users = {n: secrets.token_urlsafe(12) for n in ("hub", NODE)}
        with Broker(work / "mq", users) as broker:
            hub = Hub(broker, work / "hub", "bench-hub")
            try:
                hub.wait_ready()
                node = launch_node(broker, work, NODE, model, rate_hz=rate_hz, source="csv")
                counter = mqtt_client(broker, "hub")
                subscribe(counter, f"edgeml/v1/{NODE}/+")
                time.sleep(warmup_s)
                drain(state(counter).messages)
                time.sleep(seconds)
                seen = drain(state(counter).messages)
                node.stop()
                close(counter)
            finally:
                hub.stop()
    minutes = seconds / 60
    print(f"one node at {rate_hz:g} Hz, default timers, over {seconds:g} s (per minute):")
    total = 0.0
    for kind, sizes in sorted(seen.items()):
        topic = node_topic(NODE, Kind(kind))
        packets = sum(publish_bytes(topic, s) for s in sizes)
        total += packets
        print(
            f"  {kind:10s}: {len(sizes) / minutes:6.1f} messages, {packets / minutes:8.0f} B "
            f"({np.mean(sizes):.0f} B payload each)"
        )
    readings = rate_hz * 60
    results = seen.get(Kind.RESULT.value, [])
    result_bytes = sum(publish_bytes(node_topic(NODE, Kind.RESULT), s) for s in results)
    print(
        f"  all        : {total / minutes:8.0f} B = {total / minutes / readings:.2f} B/reading "
        f"(results alone {result_bytes / minutes / readings:.2f}) = "
        f"{total / minutes / readings / RAW_BYTES:.2f} x baseline"
    )


def drain(messages: queue.Queue[Any]) -> dict[str, list[int]]:
    """Payload sizes by topic kind of the messages received so far."""
    out: dict[str, list[int]] = defaultdict(list)
    while True:
        try:
            message = messages.get_nowait()
        except queue.Empty:
            return out
        out[message.topic.rsplit("/", 1)[1]].append(len(message.payload))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--skab-dir", type=Path, default=DEFAULT_SKAB)
    parser.add_argument("--seconds", type=float, default=120.0)
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--rate-hz", type=float, default=50.0)
    args = parser.parse_args()
    per_reading(args.skab_dir)
    per_minute(args.seconds, args.warmup_s, args.rate_hz)


if __name__ == "__main__":
    main()
