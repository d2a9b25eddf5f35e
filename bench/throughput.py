"""End-to-end throughput: edge-node processes -> Mosquitto -> cloud-hub, against the same
readings scored in-process with no I/O (the baseline, measured in the same run).

Each node replays the SKAB valve1 files (``--repeat`` times) as fast as it can and exits when
the broker has acknowledged everything; the clock stops when the hub has counted every reading.

    .venv/bin/python bench/throughput.py [--nodes 1 3] [--repeat 10] [--skab-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.skab import DEFAULT_DIR, healthy_model  # noqa: E402
from edge_node.scoring.batcher import ResultBatcher  # noqa: E402
from edge_node.scoring.events import EpisodeConfig  # noqa: E402
from edge_node.scoring.pipeline import Pipeline  # noqa: E402
from edge_node.scoring.runtime import ModelRuntime  # noqa: E402
from edge_node.sources.base import Block  # noqa: E402
from schemas.readings_csv import read_csv  # noqa: E402
from tests.broker import Broker  # noqa: E402
from tests.integration.processes import Hub, Node, node_config, wait_for  # noqa: E402


def in_process(model: Path, files: list[Path], repeat: int) -> float:
    """Readings/s through window -> ONNX -> batcher/episodes/drift, blocks of 256, no I/O."""
    data = [read_csv(f) for f in files]
    runtime = ModelRuntime.load(model, sensors=data[0].channels)
    pipeline = Pipeline(runtime, data[0].channels, ResultBatcher(256, 1.0), EpisodeConfig())
    total, start = 0, time.perf_counter()
    for _ in range(repeat):
        for d in data:
            for i in range(0, len(d.values), 256):
                values = d.values[i : i + 256]
                pipeline.process(Block(float(i), 1.0, values), 0.0, time.perf_counter)
                total += len(values)
    return total / (time.perf_counter() - start)


def end_to_end(
    model: Path, files: list[Path], repeat: int, nodes: int, work: Path
) -> tuple[float, int, float]:
    """(readings/s counted by the hub, readings per node, peak node RSS in MB)."""
    names = [f"bench-{i}" for i in range(nodes)]
    broker = Broker(work / "mq", {n: secrets.token_urlsafe(12) for n in ("hub", *names)})
    broker.start()
    hub = Hub(broker, work / "hub", client_id="hub-bench")
    procs: list[Node] = []
    try:
        hub.wait_ready()
        paths = ", ".join(f'"{f}"' for f in files * repeat)
        per_node = sum(len(read_csv(f).values) for f in files) * repeat
        configs = [
            node_config(
                work / f"{n}.toml",
                node=n,
                broker=broker,
                model_dir=model,
                source=f'kind = "csv"\npaths = [{paths}]\nspeed = 0\n',
            )
            for n in names
        ]
        start = time.perf_counter()
        procs = [Node(c) for c in configs]
        peak = 0.0
        while time.perf_counter() - start < 600:
            peak = max(peak, *(_rss_mb(p.popen.pid) for p in procs))
            if _counted(hub, names) >= per_node * nodes:
                break
            time.sleep(0.2)
        elapsed = time.perf_counter() - start
        wait_for(lambda: _counted(hub, names) >= per_node * nodes, 5, "all readings", hub)
        return per_node * nodes / elapsed, per_node, peak
    finally:
        for p in procs:
            p.stop()
        hub.stop()
        broker.stop()


def _counted(hub: Hub, names: list[str]) -> float:
    return sum(hub.value("edgeml_readings_total", node=n) for n in names)


def _rss_mb(pid: int) -> float:
    try:
        return float(psutil.Process(pid).memory_info().rss) / 1e6
    except psutil.Error:
        return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--repeat", type=int, default=10, help="times each node replays valve1")
    parser.add_argument("--skab-dir", type=Path, default=DEFAULT_DIR)
    args = parser.parse_args()
    files = sorted((args.skab_dir / "valve1").glob("*.csv"), key=lambda p: int(p.stem))
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        healthy_model(args.skab_dir, work / "model")
        baseline = in_process(work / "model", files, args.repeat)
        print(f"in-process scoring, no I/O (baseline): {baseline:12,.0f} readings/s")
        for n in args.nodes:
            rate, per_node, peak = end_to_end(
                work / "model", files, args.repeat, n, work / f"run-{n}"
            )
            print(
                f"{n} node(s) x {per_node:,} readings end to end:  {rate:12,.0f} readings/s"
                f"  = {rate / baseline:.2f} x baseline  (peak node RSS {peak:.0f} MB)"
            )
        print(f"cores: {os.cpu_count()}; every process shares them (broker, hub, nodes)")


if __name__ == "__main__":
    main()
