"""Seeded fuzzing of the hub's inbound path with mutated golden payloads: the hub stays up, its
memory stays bounded, and no rejected or replayed message changes a count."""

from __future__ import annotations

import logging
import random
import tracemalloc
from collections import Counter
from pathlib import Path
from typing import Any

import msgpack
import pytest

from cloud_hub.ingest.coverage import Coverage
from cloud_hub.ingest.dedupe import Deduper
from cloud_hub.ingest.fleet import FleetState
from cloud_hub.ingest.inbound import Ingest
from schemas.topics import NODE_TO_HUB, node_topic

GOLDEN = Path(__file__).resolve().parents[2] / "schemas" / "golden"
PAYLOADS = 20_000
NODES = ["pump-01", "pump-02", "pump-03"]
BOOTS = [f"boot-{i:02d}" for i in range(24)]  # three times the boots a node keeps in memory
EXTREMES: list[Any] = [
    -1, 0, 1, 2**31, 2**53, 2**62, 2**64 - 1, -(2**63), 1e18, -1e18, float("nan"),
    float("inf"), "", "x" * 5000, b"\x00" * 7, [], {}, None, True,
]  # fmt: skip
NOW = 1_800_000_000.0
# Built once: the run keeps applied payloads with their topics for the replay at the end.
TOPICS = {(n, k.value): node_topic(n, k) for n in NODES for k in NODE_TO_HUB}


def _golden() -> dict[str, dict[str, Any]]:
    kinds = {k.value for k in NODE_TO_HUB}
    return {
        p.stem: msgpack.unpackb(p.read_bytes()) for p in GOLDEN.glob("*.msgpack") if p.stem in kinds
    }


def _nested(depth: int) -> bytes:
    return b"\x91" * depth + b"\x01"


def mutate(
    rng: random.Random, kind: str, base: dict[str, Any], now: float = NOW
) -> tuple[str, bytes]:
    """One mutated payload of ``kind`` (stamped ``now``) and the topic it is sent on."""
    fields = dict(base)
    node = rng.choice(NODES)
    fields.update(node=node, boot=rng.choice(BOOTS), seq=rng.randrange(200), ts=now)
    if kind == "result":
        fields["first"] = fields["seq"] * fields["n"]
    topic = TOPICS[node, kind]
    choice = rng.random()
    if choice < 0.35:
        pass  # valid, with replays: seqs repeat across the run
    elif choice < 0.7:
        key = rng.choice(sorted(fields))
        fields[key] = rng.choice(EXTREMES)
    elif choice < 0.75:
        fields["node"] = rng.choice(NODES)  # may not match the topic
    elif choice < 0.8:
        topic = rng.choice(["edgeml/v1/x", "edgeml/v1/a/b/c", "edgeml/v1/pump-01/cmd", "z" * 70])
    elif choice < 0.85:
        data = msgpack.packb({**fields, "added": "HOLE"})
        return topic, data.replace(msgpack.packb("HOLE"), _nested(rng.choice([50, 2000, 50_000])))
    data = msgpack.packb(fields)
    if choice >= 0.85:
        raw = bytearray(data)
        for _ in range(rng.randrange(1, 6)):
            op = rng.random()
            at = rng.randrange(len(raw))
            if op < 0.5:
                raw[at] = rng.randrange(256)
            elif op < 0.75:
                del raw[at:]
                raw += b"\x00" if not raw else b""
            else:
                raw[at:at] = rng.randbytes(rng.randrange(1, 9))
        data = bytes(raw)
    return topic, data


def _hub_memory() -> int:
    """Bytes held by objects the hub's code allocated (not the test's lists or log capture)."""
    snapshot = tracemalloc.take_snapshot().filter_traces(
        [tracemalloc.Filter(True, "*/cloud_hub/*"), tracemalloc.Filter(True, "*/schemas/*")]
    )
    return sum(stat.size for stat in snapshot.statistics("filename"))


def _totals(ingest: Ingest) -> tuple[int, ...]:
    return tuple(
        v
        for s in ingest.fleet.nodes()
        for v in (s.readings, s.anomalous, s.events_opened, s.events_closed)
    )


def test_twenty_thousand_mutated_payloads_change_nothing_they_should_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # 10,000 rejection warnings kept by the log capture would be counted as the hub's memory.
    caplog.set_level(logging.ERROR, logger="cloud_hub.ingest.inbound")
    rng = random.Random(20_000)
    golden = _golden()
    store: dict[tuple[str, str], Coverage] = {}  # what the hub's commits write
    ingest = Ingest(FleetState(60.0), Deduper(load=lambda n, b: store.get((n, b))))
    statuses: Counter[str] = Counter()
    applied: list[tuple[str, bytes]] = []
    tracemalloc.start()
    try:
        for i in range(PAYLOADS):
            kind = rng.choice(sorted(golden))
            topic, data = mutate(rng, kind, golden[kind])
            before = _totals(ingest)
            out = ingest.handle(topic, data, NOW)
            statuses[out.status] += 1
            if out.status in ("rejected", "duplicate"):
                assert _totals(ingest) == before, (out, i)
            elif out.status == "applied":
                applied.append((topic, data))
            if i % 500 == 0:
                store.update(ingest.deduper.take_dirty())
            if i == 2000:
                early = _hub_memory()
        store.update(ingest.deduper.take_dirty())
        late = _hub_memory()
    finally:
        tracemalloc.stop()
    reasons = Counter(r for r, _ in ingest.rejects.elements())
    print(f"\n{PAYLOADS} payloads: {dict(statuses)}; rejects by reason: {dict(reasons)}")
    print(f"hub memory at half way {early / 1e6:.3f} MB, at the end {late / 1e6:.3f} MB")
    assert ingest.rejects.get(("internal", "result"), 0) == 0
    assert not any(reason == "internal" for reason, _ in ingest.rejects)
    assert statuses["rejected"] > PAYLOADS / 4 and statuses["applied"] > 1000
    # Bounded: the second half of the run adds (almost) nothing to what the first half built.
    assert late < 1.2 * early + 100_000
    for node in NODES:
        assert ingest.deduper.gaps(node) <= 200 * len(BOOTS)
        assert ingest.fleet.missing_readings(node) < 10**7

    # Every message that was applied, sent again (as after a node's or broker's restart), counts
    # nothing, however many boots ago it was.
    totals = _totals(ingest)
    for topic, data in applied:
        out = ingest.handle(topic, data, NOW)
        # A status is state, not stream: applying the same one again changes nothing.
        assert out.status == "duplicate" or out.kind == "status", out
    assert _totals(ingest) == totals
