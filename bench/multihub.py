"""Hubs sharing one stream: ingest throughput of 1 hub against 3 hubs in a share group on one
PostgreSQL store (and 1 hub on SQLite, today's default, for reference), measured in the same
run; then the long kill test: 3 hubs, nodes streaming, one hub frozen and killed mid-stream.

Throughput: a backlog of result messages is published while the hubs are away (their
sessions hold it: Mosquitto assigns each message of a shared subscription to one member's
session, round-robin), then the hubs start; the clock runs from the first hub's CONNACK
until the store holds every reading. Rounds alternate the set-ups; medians are printed.

    .venv/bin/python bench/multihub.py [--messages 24000] [--nodes 48] [--rounds 3]
                                       [--kill-nodes 4] [--kill-readings 6000]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.ingest import READINGS, publish_backlog  # noqa: E402
from cloud_hub.ingest.snapshot import load_node  # noqa: E402
from cloud_hub.store.rows import SELECT_STATES  # noqa: E402
from tests.broker import Broker  # noqa: E402
from tests.chaos import make_model_and_csv  # noqa: E402
from tests.integration.processes import Hub, wait_for  # noqa: E402
from tests.multihub import HubGroup  # noqa: E402
from tests.postgres import Postgres  # noqa: E402


def _stored_readings(url: str) -> int:
    with psycopg.connect(url) as db:
        rows = db.execute(SELECT_STATES).fetchall()
    return sum(load_node(data, live).readings for (data, *live) in rows)


def _hubs(broker: Broker, work: Path, count: int, env: dict[str, str], tag: str) -> list[Hub]:
    return [Hub(broker, work / f"{tag}-{i}", client_id=f"{tag}-{i}", env=env) for i in range(count)]


def drain(
    broker: Broker, work: Path, nodes: list[str], per_node: int, *, count: int, url: str, tag: str
) -> float:
    """Messages/s that ``count`` hubs (on ``url``, or SQLite when empty) drain together.

    ``broker`` must be fresh: a stopped hub's session in a group keeps being assigned a share.
    """
    env = {"CLOUD_HUB__STORE__URL": url, "CLOUD_HUB__MQTT__SHARE_GROUP": "bench"} if url else {}
    first = _hubs(broker, work, count, env, tag)
    for hub in first:  # subscribe once, so that the sessions exist and hold the backlog
        wait_for(lambda h=hub: "connected to the broker" in h.output(), 20, "hub", hub)  # type: ignore[misc]
    for hub in first:
        hub.stop()
    publish_backlog(broker, nodes, per_node, tag)
    want = per_node * len(nodes) * READINGS
    second = _hubs(broker, work, count, env, tag)
    try:
        while not any("connected to the broker" in h.output(5) for h in second):
            time.sleep(0.005)
        start = time.perf_counter()
        if url:
            wait_for(lambda: _stored_readings(url) >= want, 600, "every reading", *second)
        else:
            hub = second[0]
            wait_for(
                lambda: sum(hub.value("edgeml_readings_total", node=n) for n in nodes) >= want,
                600,
                "every reading",
                hub,
            )
        return per_node * len(nodes) / (time.perf_counter() - start)
    finally:
        for hub in second:
            hub.stop()


def throughput(args: argparse.Namespace, pg: Postgres, work: Path) -> dict[str, list[float]]:
    """Rates per set-up, one per round."""
    names = [f"mh-{i}" for i in range(args.nodes)]
    per_node = args.messages // args.nodes
    users = {n: secrets.token_urlsafe(12) for n in ("hub", *names)}
    rates: dict[str, list[float]] = {"sqlite-1": [], "pg-1": [], "pg-3": []}
    for r in range(args.rounds):
        for setup, got in rates.items():
            url = pg.new_database() if setup.startswith("pg") else ""
            tag = f"{setup}-{r}"
            with Broker(work / tag / "mq", users) as broker:
                rate = drain(
                    broker, work / tag, names, per_node, count=int(setup[-1]), url=url, tag=tag
                )
            got.append(rate)
            print(f"round {r}: {setup:9s} {rate:8,.0f} msg/s", flush=True)
    return rates


def kill_test(args: argparse.Namespace, pg: Postgres, work: Path) -> None:
    """3 hubs, ``kill_nodes`` nodes streaming, hub 1 frozen then killed mid-stream."""
    source = make_model_and_csv(work, args.kill_readings)
    group = HubGroup(work, pg.new_database(), hubs=3, nodes=args.kill_nodes, source=source,
                     speed=400)  # fmt: skip
    try:
        group.start_nodes()
        time.sleep(args.kill_readings / 400 / 3)
        group.kill_hub(1, frozen_s=2.0)
        drained = group.wait_drained(600)
        time.sleep(1.5)  # one refresh of each live hub's /metrics
        out = group.outcome()
    finally:
        group.close()
    produced, counted = sum(out.produced.values()), sum(out.counted.values())
    print(f"kill test: {args.kill_nodes} nodes x {args.kill_readings} readings, 3 hubs, "
          "hub 1 frozen 2 s then SIGKILL at 1/3 of the stream; "
          f"drained {drained:.1f} s after")  # fmt: skip
    print(f"  produced {produced}, counted {counted}, lost {sum(out.lost.values())}, "
          f"double-counted {sum(out.double.values())}; fleet total on each live hub's "
          f"/metrics: {[int(t) for t in out.fleet_totals]}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=24_000)
    parser.add_argument("--nodes", type=int, default=48)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--kill-nodes", type=int, default=4)
    parser.add_argument("--kill-readings", type=int, default=6000)
    args = parser.parse_args()
    pg = Postgres(fsync=True)
    pg.start()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            rates = throughput(args, pg, Path(tmp) / "rate")
            kill_test(args, pg, Path(tmp) / "kill")
    finally:
        pg.stop()
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"\nmedians of {args.rounds} rounds, {args.messages:,} result messages of {READINGS} "
          f"readings from {args.nodes} nodes; cores: {os.cpu_count()}, shared by broker, "
          "PostgreSQL and hubs")  # fmt: skip
    print(f"1 hub, SQLite (today's default):   {med['sqlite-1']:8,.0f} msg/s")
    print(f"1 hub, PostgreSQL (baseline):      {med['pg-1']:8,.0f} msg/s "
          f"= {med['pg-1'] / med['sqlite-1']:.2f} x SQLite")  # fmt: skip
    print(f"3 hubs, PostgreSQL, share group:   {med['pg-3']:8,.0f} msg/s "
          f"= {med['pg-3'] / med['pg-1']:.2f} x 1 hub")  # fmt: skip


if __name__ == "__main__":
    main()
