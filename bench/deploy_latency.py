"""Model deploy and rollback latency over a real broker, against a ping round trip measured in
the same run, and the readings scored while a deploy is under way.

Times run from the moment the command appears on the broker to the node's ``applied`` ack,
both seen by a watching client, so process start-up of the CLI is not counted.

    .venv/bin/python bench/deploy_latency.py [--size 250000] [--nodes 1 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import itertools
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from schemas.codec import decode  # noqa: E402
from schemas.messages import ResultBatch  # noqa: E402
from tests.broker import Broker  # noqa: E402
from tests.integration import models  # noqa: E402
from tests.integration.processes import Hub, Node, node_config  # noqa: E402
from tests.mqtt_clients import close, mqtt_client, receive, subscribe  # noqa: E402

SIM = 'kind = "sim"\nseed = {seed}\nrate_hz = 50\nspeed = 1\n'


class Watch:
    """Sees commands, acks and results of every node as the broker passes them on."""

    def __init__(self, broker: Broker) -> None:
        self.client = mqtt_client(broker, "hub", client_id=f"bench-{secrets.token_hex(3)}")
        subscribe(self.client, "edgeml/v1/+/cmd")
        subscribe(self.client, "edgeml/v1/+/ack")
        subscribe(self.client, "edgeml/v1/+/result")
        self.results: list[ResultBatch] = []

    def command_round(self, hub: Hub, nodes: list[str], *args: str) -> float:
        """Seconds from the first command on the broker to the last node's final ack."""
        proc = hub.cli_async(*args, *[a for n in nodes for a in ("--node", n)])
        start: float | None = None
        end = 0.0
        final: dict[str, str] = {}
        while len(final) < len(nodes):
            (message,) = receive(self.client, 1, 60)
            now = time.time()
            node, kind = message.topic.split("/")[2:4]
            if kind == "cmd" and start is None:
                start = now
            elif kind == "result":
                self.results.append(decode("result", bytes(message.payload)))
            elif kind == "ack":
                ack = decode("ack", bytes(message.payload))
                if ack.status in {"applied", "failed", "rejected"}:
                    final[node] = ack.status
                    end = now
        proc.wait(60)  # the CLI itself may listen on for a rollback (its --settle)
        if set(final.values()) != {"applied"} or start is None:
            raise RuntimeError(f"{args[0]} did not apply everywhere: {final}")
        return end - start

    def collect(self, seconds: float) -> None:
        """Keep the result batches that arrive in the next ``seconds``."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            try:
                (message,) = receive(self.client, 1, left)
            except TimeoutError:
                return
            if message.topic.endswith("/result"):
                self.results.append(decode("result", bytes(message.payload)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=250_000, help="model artifact bytes")
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    names = [f"bench-{i}" for i in range(max(args.nodes))]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        v1 = models.train(work / "v1", "1", slice(0, 3000))
        v2 = models.padded(v1, work / "v2", "2", args.size - (v1 / "model.onnx").stat().st_size)
        broker = Broker(work / "mq", {n: secrets.token_urlsafe(12) for n in ("hub", *names)})
        broker.start()
        hub = Hub(broker, work / "hub", client_id="hub-bench")
        nodes = [
            Node(
                node_config(
                    work / f"{n}.toml",
                    node=n,
                    broker=broker,
                    model_dir=v1,
                    source=SIM.format(seed=i + 1),
                ),
                exit_when_drained=False,
            )
            for i, n in enumerate(names)
        ]
        watch = Watch(broker)
        try:
            hub.wait_ready()
            for folder in (v1, v2):
                hub.cli("register", str(folder))
            time.sleep(3)  # every node connected and scoring
            print(
                f"artifact {(v2 / 'model.onnx').stat().st_size:,} bytes "
                f"(broker packet limit 262,144): sent in 64 KiB chunks"
            )
            for count in args.nodes:
                _measure(hub, watch, names[:count], args.rounds)
            _gaps(hub, names)
        finally:
            close(watch.client)
            for node in nodes:
                node.stop()
            hub.stop()
            broker.stop()


def _measure(hub: Hub, watch: Watch, nodes: list[str], rounds: int) -> None:
    ping, deploy, rollback = [], [], []
    for _ in range(rounds):
        ping.append(watch.command_round(hub, nodes, "ping"))
        watch.results.clear()
        deploy.append(
            watch.command_round(hub, nodes, "deploy", "--model", "pump-pca", "--version", "2")
        )
        watch.collect(2.0)  # the batches holding the readings scored during the deploy
        scored, contiguous = _around_switch(watch.results, nodes[0])
        rollback.append(watch.command_round(hub, nodes, "rollback"))
    p, d, r = (statistics.median(x) for x in (ping, deploy, rollback))
    print(
        f"{len(nodes)} node(s), median of {rounds}: ping {p * 1000:.0f} ms (baseline), "
        f"deploy {d * 1000:.0f} ms = {d / p:.1f} x ping, "
        f"rollback {r * 1000:.0f} ms = {r / p:.1f} x ping"
    )
    print(
        f"  {nodes[0]}, last deploy: readings in the batches from the command to 2 s after "
        f"the ack {scored}; indexes contiguous across the switch: {contiguous}"
    )


def _around_switch(results: list[ResultBatch], node: str) -> tuple[dict[str, int], bool]:
    """Readings of ``node`` in the batches received from the deploy command to two seconds
    after its ack, by model; and whether their reading indexes run on without a hole."""
    batches = sorted((b for b in results if b.node == node), key=lambda b: b.first)
    by_model: dict[str, int] = {}
    for b in batches:
        key = f"{b.model.name}@{b.model.version}"
        by_model[key] = by_model.get(key, 0) + b.n
    contiguous = all(a.first + a.n == b.first for a, b in itertools.pairwise(batches))
    return by_model, contiguous and bool(batches)


def _gaps(hub: Hub, names: list[str]) -> None:
    gaps = sum(hub.value("edgeml_seq_gaps", node=n) for n in names)
    missing = sum(hub.value("edgeml_missing_readings", node=n) for n in names)
    total = sum(hub.value("edgeml_readings_total", node=n) for n in names)
    print(f"hub: {total:,.0f} readings, {missing:.0f} missing, {gaps:.0f} seq gaps")


if __name__ == "__main__":
    main()
