"""Chaos runs: produced / counted / lost / double-counted readings under kill -9 of the broker
(at random moments, the first before its first autosave), of the hub and of nodes, a
partition (the broker frozen with SIGSTOP), and all of them together.

    .venv/bin/python bench/chaos.py [--runs 5] [--nodes 3] [--readings 6000] [--speed 200]
        [--partition-s 600] [--only broker,hub,node,partition,all] [--seed 1]

Each run starts a fresh broker, hub and nodes; the nodes replay ``--readings`` simulated
readings at ``--speed`` readings/s, the faults happen while they stream, and the run ends when
every node has drained (the hub confirmed everything it accepted). See tests/chaos.py for how
each column is measured.
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.chaos import HEADER, Fleet, Tally, make_model_and_csv  # noqa: E402

Fault = Callable[[Fleet, random.Random, float], None]


def broker_kills(fleet: Fleet, rng: random.Random, span: float) -> None:
    # The first kill comes within a few seconds of the broker's start: before its first
    # autosave (autosave_interval 30 s), so it forgets the hub's session and what it queued.
    time.sleep(rng.uniform(1.0, 4.0))
    fleet.kill_broker(rng.uniform(0.2, 2.0))
    time.sleep(rng.uniform(0.0, span / 2))
    fleet.kill_broker(rng.uniform(0.2, 2.0))


def hub_kills(fleet: Fleet, rng: random.Random, span: float) -> None:
    for _ in range(2):
        time.sleep(rng.uniform(1.0, span / 3))
        fleet.kill_hub(rng.uniform(0.2, 2.0))


def node_kills(fleet: Fleet, rng: random.Random, span: float) -> None:
    for _ in range(2):
        time.sleep(rng.uniform(1.0, span / 3))
        fleet.kill_node(rng.randrange(len(fleet.nodes)), rng.uniform(0.2, 1.0))


def partition(seconds: float) -> Fault:
    def fault(fleet: Fleet, rng: random.Random, span: float) -> None:
        time.sleep(rng.uniform(1.0, 3.0))
        fleet.partition(seconds)

    return fault


def everything(seconds: float) -> Fault:
    def fault(fleet: Fleet, rng: random.Random, span: float) -> None:
        time.sleep(rng.uniform(1.0, 3.0))
        fleet.kill_broker(rng.uniform(0.2, 1.0))
        time.sleep(rng.uniform(0.5, 2.0))
        fleet.kill_hub(rng.uniform(0.2, 1.0))
        time.sleep(rng.uniform(0.5, 2.0))
        fleet.kill_node(rng.randrange(len(fleet.nodes)), 0.5)
        time.sleep(rng.uniform(0.5, 2.0))
        fleet.partition(seconds)
        fleet.kill_hub(0.5)
        fleet.kill_broker(0.5)

    return fault


def run(scenario: str, fault: Fault, args: argparse.Namespace, seed: int, work: Path) -> Tally:
    rng = random.Random(seed)
    source = make_model_and_csv(work, args.readings)
    fleet = Fleet(work / "run", args.nodes, source, speed=args.speed, resend_s=args.resend_s)
    try:
        fault(fleet, rng, args.readings / args.speed)
    except BaseException:
        fleet.close()
        raise
    return fleet.finish(scenario, timeout=args.timeout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--readings", type=int, default=6000, help="per node and boot")
    parser.add_argument("--speed", type=float, default=200.0, help="readings/s per node")
    parser.add_argument("--partition-s", type=float, default=600.0)
    parser.add_argument("--resend-s", type=float, default=10.0, help="0: the node's default")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--only", default="broker,hub,node,partition,all")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    scenarios: dict[str, tuple[Fault, int]] = {
        "broker kill -9 (first before its first autosave)": (broker_kills, args.runs),
        "hub kill -9": (hub_kills, args.runs),
        "node kill -9": (node_kills, args.runs),
        f"partition: broker SIGSTOP {args.partition_s:.0f} s": (partition(args.partition_s), 1),
        f"all together (partition {min(args.partition_s, 30):.0f} s)": (
            everything(min(args.partition_s, 30)),
            1,
        ),
    }
    keys = dict(zip(["broker", "hub", "node", "partition", "all"], scenarios, strict=True))
    rows = []
    for key in args.only.split(","):
        name = keys[key]
        fault, runs = scenarios[name]
        total = Tally(name)
        for i in range(runs):
            with tempfile.TemporaryDirectory() as tmp:
                tally = run(name, fault, args, args.seed * 1000 + i, Path(tmp))
            print(tally.row(), flush=True)
            total.add(tally)
        rows.append(total.row())
    print(f"\n{args.nodes} nodes x {args.readings:,} readings per boot at {args.speed:.0f}/s")
    print(HEADER)
    print("\n".join(rows))


if __name__ == "__main__":
    main()
