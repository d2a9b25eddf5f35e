"""The hub's CPU per message when every message comes from a different node: apply and commit.

A fleet of ``--nodes`` nodes (10,000) is built with the state ``bench/hub_memory.py`` gives
each (a birth with capabilities, result batches, an episode, telemetry, a drift report) and
committed to a SQLite store, as ``cloud-hub serve`` keeps it (durable state on). Then rounds of
messages are applied and committed through the hub's real code (``Ingest.handle``, the
store's ``commit`` as ``HubApp.commit`` calls it), one message per node per round, in commits
of ``ingest.commit_batch`` (500) messages: each message dirties a different node. The kinds
follow a node's defaults (a result batch a second, telemetry every 10 s, drift every 60 s):
53 results, 6 telemetry and 1 drift report per 60 messages of a node, interleaved over nodes.

The baseline, measured in the same run on the same messages, is decoding them with msgspec
(``schemas.codec.decode``): the least any consumer of the stream does per message.

    .venv/bin/python bench/hub_commit.py [--nodes 10000] [--rounds 5] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.hub_memory import BATCH, KIND_OF, node_messages  # noqa: E402
from cloud_hub.config import IngestConfig  # noqa: E402
from cloud_hub.ingest.dedupe import Deduper  # noqa: E402
from cloud_hub.ingest.fleet import FleetState  # noqa: E402
from cloud_hub.ingest.inbound import Ingest  # noqa: E402
from cloud_hub.store.base import HubStore, open_store  # noqa: E402
from schemas.codec import decode, encode  # noqa: E402
from schemas.topics import Kind, node_topic  # noqa: E402

Payloads = list[tuple[str, bytes]]


class Hub:
    """The hub's ingest state and store, committed as ``HubApp.commit`` does (minus the acks)."""

    def __init__(self, store: HubStore) -> None:
        self.store = store
        self.ingest = Ingest(FleetState(offline_after_s=60.0), Deduper(load=store.load_stream))

    def commit(self, now: float) -> None:
        ingest = self.ingest
        states, streams = ingest.fleet.take_dirty(), ingest.deduper.take_dirty()
        profiles, healths = ingest.take_profiles(), ingest.take_healths()
        self.store.commit(
            states, streams, now, ingest.fleet.shadows, profiles=profiles, healths=healths
        )
        ingest.deduper.take_due()


def later_messages(first: list[Any], node_index: int, rounds: int, now: float) -> list[Any]:
    """What a node sends after ``first`` (its first minute), one message per round."""
    results, telemetry, drift = first[1:11], first[12], first[13]
    last = results[-1]
    seq = drift.seq
    out: list[Any] = []
    reading = last.first + last.n
    for r in range(rounds):
        seq += 1
        k = (node_index * 7 + r) % 60
        ts = now - rounds + r
        if k == 0:
            out.append(msgspec.structs.replace(drift, seq=seq, ts=ts))
        elif k % 10 == 5:
            out.append(msgspec.structs.replace(telemetry, seq=seq, ts=ts, outbox_depth=r))
        else:
            out.append(msgspec.structs.replace(last, seq=seq, ts=ts, first=reading))
            reading += BATCH
    return out


def payloads_of(messages: list[Any]) -> Payloads:
    return [(node_topic(m.node, Kind(KIND_OF[type(m)])), encode(m)) for m in messages]


def build(nodes: int, rounds: int, now: float) -> tuple[Payloads, list[Payloads]]:
    """The fleet's first minute, and the measured rounds (one message per node each)."""
    setup: list[Any] = []
    later: list[list[Any]] = []
    for i in range(nodes):
        first = node_messages(f"node-{i:05d}", i)
        setup += first
        later.append(later_messages(first, i, rounds, now))
    measured = [payloads_of([later[i][r] for i in range(nodes)]) for r in range(rounds)]
    return payloads_of(setup), measured


def apply_and_commit(
    hub: Hub, payloads: Payloads, batch: int, now: float
) -> tuple[float, float, float]:
    """CPU seconds spent applying and committing ``payloads`` in commits of ``batch``
    messages, and the wall-clock seconds of the commits (they wait on the disk too)."""
    handle = hub.ingest.handle
    cpu, wall = time.process_time, time.perf_counter
    applying = committing = waiting = 0.0
    for start in range(0, len(payloads), batch):
        t0 = cpu()
        for topic, payload in payloads[start : start + batch]:
            handle(topic, payload, now)
        t1, w1 = cpu(), wall()
        hub.commit(now)
        applying += t1 - t0
        committing += cpu() - t1
        waiting += wall() - w1
    return applying, committing, waiting


def decoding(payloads: Payloads) -> float:
    """CPU seconds to decode ``payloads`` with msgspec (the baseline)."""
    kinds = [(Kind(topic.rsplit("/", 1)[1]).value, payload) for topic, payload in payloads]
    t0 = time.process_time()
    for kind, payload in kinds:
        decode(kind, payload)
    return time.process_time() - t0


def profiled(run: Callable[[], object], top: int) -> None:
    profile = cProfile.Profile()
    profile.runcall(run)
    pstats.Stats(profile).sort_stats("tottime").print_stats(top)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds (1 message/node)")
    parser.add_argument("--profile", action="store_true", help="cProfile one more round")
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    now = time.time()
    batch = IngestConfig().commit_batch
    setup, rounds = build(args.nodes, args.rounds + int(args.profile), now)
    with tempfile.TemporaryDirectory() as tmp:
        store = open_store("", Path(tmp) / "hub.db")
        hub = Hub(store)
        apply_and_commit(hub, setup, batch, now)
        n = args.nodes
        print(f"{n:,} nodes in the store; {len(rounds[0]):,} messages per round, "
              f"{batch} per commit, each from a different node")  # fmt: skip
        print("CPU us per message; wall: the commits' wall-clock time (disk waits too)")
        print(f"{'round':>5} {'decode':>8} {'apply':>8} {'commit':>8} {'wall':>8}")
        figures: dict[str, list[float]] = {"decode": [], "apply": [], "commit": [], "wall": []}
        for r in range(args.rounds):
            base = decoding(rounds[r])
            times = (base, *apply_and_commit(hub, rounds[r], batch, now))
            for values, seconds in zip(figures.values(), times, strict=True):
                values.append(seconds / n * 1e6)
            print(f"{r:>5} " + " ".join(f"{v[-1]:8.1f}" for v in figures.values()))
        applied, committed = figures["apply"], figures["commit"]
        figures["total CPU"] = [a + c for a, c in zip(applied, committed, strict=True)]
        base = statistics.median(figures["decode"])
        for name, values in figures.items():
            mid = statistics.median(values)
            print(f"{name:>9}: median {mid:6.1f} us/message (spread {min(values):.1f}-"
                  f"{max(values):.1f}) = {mid / base:5.1f} x decoding")  # fmt: skip
        if args.profile:
            profiled(lambda: apply_and_commit(hub, rounds[-1], batch, now), args.top)
        store.close()


if __name__ == "__main__":
    main()
