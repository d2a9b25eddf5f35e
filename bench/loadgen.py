"""Load generator: N simulated nodes, each under its own broker account, against a real hub.

Every node connects with its own account of the dynamic security plugin (bound to its client
id, like a real node's: mosquitto/dynsec_clients.py), so the broker's per-client work (session,
ACL patterns on %u, one socket each) is the real one. A node publishes the node's real message
mix with the real encodings (schemas.codec): a retained birth with capabilities at connect, a
result batch every ``--result-s`` holding the readings of that interval at ``--sample-hz``,
telemetry every ``--telemetry-s`` and drift every ``--drift-s``, each node starting at a random
phase. The defaults are the node's own (``batch.max_age_s`` 5 s, the simulator's 1 Hz,
``telemetry.interval_s`` and ``drift_interval_s`` 60 s): ~0.23 messages/s per node. Nodes do
not subscribe to their receipts (the hub still publishes them; the broker drops what no one
reads).

Connections are plain asyncio sockets speaking the few MQTT 5 packets a node needs (CONNECT,
PUBLISH at QoS 1, PINGREQ; PUBACKs are read and counted), several hundred per process and
``--procs`` processes: 10,000 paho clients would need 10,000 threads.

The hub is ``cloud-hub serve`` with its defaults (durable state on). Measured after
``--warmup`` s, over ``--window`` s: the hub's CPU (% of one core, from /proc via psutil), its
RSS and the growth per node over the hub before the nodes came, /metrics time (median of 5
scrapes), and its lag: now minus the node timestamp of the message it applied last.
Baseline in the same run: a bare paho subscriber (counts, auto-acks) on the same stream, its CPU.

    .venv/bin/python bench/loadgen.py [--nodes 10000] [--procs 4] [--window 60]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import os
import random
import secrets
import statistics
import struct
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import paho.mqtt.client as mqtt
import psutil
from paho.mqtt.enums import CallbackAPIVersion

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_node.config import BatchSection, SourceSection, TelemetrySection  # noqa: E402
from schemas.codec import encode  # noqa: E402
from schemas.messages import (  # noqa: E402
    ChannelDrift,
    ModelRef,
    Percentiles,
    ResultBatch,
    ScoreStats,
)
from schemas.packing import pack_f32, pack_flags  # noqa: E402
from schemas.samples import SAMPLES  # noqa: E402
from schemas.topics import NODE_TO_HUB, Kind, node_topic, subscription  # noqa: E402
from tests.broker import Broker, dynsec_clients  # noqa: E402
from tests.integration.processes import Hub, wait_for  # noqa: E402

CHANNELS = [f"sensor_{i}" for i in range(8)]


class FleetBroker(Broker):
    """The test broker, writing thousands of node accounts in one pass."""

    def _write_dynsec(self, nodes: dict[str, str]) -> None:
        dynsec = dynsec_clients()
        data = dynsec.empty()
        data["clients"] = [dynsec.client_entry(n, p) for n, p in nodes.items()]
        self.dynsec_path.write_text(json.dumps(data), encoding="utf-8")
        self.dynsec_path.chmod(0o600)


# --- the MQTT 5 packets a node sends (pure) ---------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _utf8(text: str) -> bytes:
    data = text.encode()
    return struct.pack("!H", len(data)) + data


def connect_packet(client_id: str, user: str, password: str, keepalive: int) -> bytes:
    """CONNECT, MQTT 5, clean start, username and password, no properties."""
    variable = _utf8("MQTT") + bytes([5, 0x80 | 0x40 | 0x02]) + struct.pack("!H", keepalive)
    body = variable + b"\x00" + _utf8(client_id) + _utf8(user) + _utf8(password)
    return b"\x10" + _varint(len(body)) + body


def publish_packet(topic: str, payload: bytes, mid: int, retain: bool = False) -> bytes:
    """PUBLISH at QoS 1 with packet id ``mid`` and no properties."""
    body = _utf8(topic) + struct.pack("!H", mid) + b"\x00" + payload
    return bytes([0x32 | (1 if retain else 0)]) + _varint(len(body)) + body


# --- one simulated node ------------------------------------------------------------------------


class SimNode:
    """A node's messages, encoded as the node encodes them."""

    def __init__(self, node: str, i: int, sample_hz: float, result_s: float) -> None:
        self.node = node
        self.boot = secrets.token_hex(8)
        self.seq = 0
        self.first = 0
        self.model = ModelRef("pump-pca", str(i % 4))
        self.group = f"site-{i % 20}"
        self.per_batch = max(1, round(sample_hz * result_s))
        self.topics = {k: node_topic(node, k) for k in (*NODE_TO_HUB, Kind.STATUS)}
        rng = np.random.default_rng(i)
        self.scores = pack_f32(rng.random(self.per_batch).astype(np.float32))
        self.flags = pack_flags(rng.random(self.per_batch) < 0.01)

    def _env(self, now: float) -> dict[str, Any]:
        return {"node": self.node, "boot": self.boot, "seq": self.seq, "ts": now}

    def birth(self, now: float) -> bytes:
        caps = msgspec.structs.replace(
            SAMPLES["status"].capabilities,  # type: ignore[attr-defined]
            channels=CHANNELS,
            group=self.group,
        )
        status = msgspec.structs.replace(
            SAMPLES["status"], **self._env(now), started_at=now, models=[self.model],
            capabilities=caps,
        )  # fmt: skip
        return encode(status)

    def result(self, now: float) -> bytes:
        n = self.per_batch
        batch = ResultBatch(
            **self._env(now), model=self.model, first=self.first, t0=now - n, period=1.0, n=n,
            threshold=4.5, scores=self.scores, flags=self.flags,
        )  # fmt: skip
        self.seq += 1
        self.first += n
        return encode(batch)

    def telemetry(self, now: float) -> bytes:
        latency = Percentiles(p50=0.05, p95=0.09, p99=0.12 + random.random() / 10, max=0.4)
        message = msgspec.structs.replace(
            SAMPLES["telemetry"], **self._env(now), model=self.model, latency_ms=latency
        )
        self.seq += 1
        return encode(message)

    def drift(self, now: float) -> bytes:
        counts = [5, 10, 20, 30, 20, 10, 5, 0, 0, 0]
        channels = [
            ChannelDrift(channel=c, psi=0.02, mean_shift_sd=0.1, mean=1.0, std=0.2, counts=counts,
                         n_eff=40.0, change=0.1 * random.random())
            for c in CHANNELS
        ]  # fmt: skip
        score = ScoreStats(mean=1.1, p50=0.9, p95=3.0, p99=4.0, flagged_fraction=0.01, psi=0.1,
                           counts=counts)  # fmt: skip
        message = msgspec.structs.replace(
            SAMPLES["drift"], **self._env(now), model=self.model, channels=channels, score=score,
            start=now - 60, end=now,
        )  # fmt: skip
        self.seq += 1
        return encode(message)


async def run_node(sim: SimNode, port: int, password: str, args: Any, stop_at: float) -> int:
    """Connect, publish the node's mix until ``stop_at``; return the messages published."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(connect_packet(sim.node, sim.node, password, 60))
    connack = await reader.readexactly(2)
    rest = await reader.readexactly(connack[1])
    if connack[0] != 0x20 or rest[1] != 0:
        raise RuntimeError(f"{sim.node}: CONNECT refused (reason {rest[1]:#x})")
    drain = asyncio.create_task(_read_all(reader))
    mid, sent = 0, 0

    def publish(kind: Kind, payload: bytes, retain: bool = False) -> None:
        nonlocal mid, sent
        mid = mid % 65535 + 1
        writer.write(publish_packet(sim.topics[kind], payload, mid, retain))
        sent += 1

    publish(Kind.STATUS, sim.birth(time.time()), retain=True)
    start = time.time()
    due = {
        Kind.RESULT: start + random.random() * args.result_s,
        Kind.TELEMETRY: start + random.random() * args.telemetry_s,
        Kind.DRIFT: start + random.random() * args.drift_s,
    }
    every = {Kind.RESULT: args.result_s, Kind.TELEMETRY: args.telemetry_s, Kind.DRIFT: args.drift_s}
    make = {Kind.RESULT: sim.result, Kind.TELEMETRY: sim.telemetry, Kind.DRIFT: sim.drift}
    ping_at = start + 30
    while True:
        kind = min(due, key=due.__getitem__)
        wait = due[kind] - time.time()
        if due[kind] >= stop_at:
            break
        if wait > 0:
            await asyncio.sleep(wait)
        publish(kind, make[kind](time.time()))
        due[kind] += every[kind]
        if time.time() > ping_at:
            writer.write(b"\xc0\x00")
            ping_at += 30
        await writer.drain()
    writer.write(b"\xe0\x00")  # DISCONNECT: no will (these nodes set none)
    await writer.drain()
    writer.close()
    drain.cancel()
    return sent


async def _read_all(reader: asyncio.StreamReader) -> None:
    while await reader.read(65536):
        pass


async def _worker_main(
    names: list[tuple[str, int]], passwords: dict[str, str], port: int, args: Any, *,
    stop_at: float, ramp_s: float,
) -> int:  # fmt: skip
    tasks = []
    for j, (node, i) in enumerate(names):
        sim = SimNode(node, i, args.sample_hz, args.result_s)
        tasks.append(asyncio.create_task(run_node(sim, port, passwords[node], args, stop_at)))
        if j % 50 == 49:
            await asyncio.sleep(ramp_s * 50 / max(1, len(names)))  # spread the connects
    results = await asyncio.gather(*tasks, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        print(f"{len(errors)} nodes failed, first: {errors[0]!r}", file=sys.stderr)
    return sum(r for r in results if isinstance(r, int))


def worker(names: list[tuple[str, int]], passwords: dict[str, str], port: int, args: Any,
           out: Any) -> None:  # fmt: skip
    """One process's share of the nodes (runs in a process of its own)."""
    main = _worker_main(names, passwords, port, args, stop_at=args.stop_at, ramp_s=args.ramp)
    out.put(asyncio.run(main))


# --- what is measured --------------------------------------------------------------------------


def cpu_percent(proc: psutil.Process, seconds: float, *others: psutil.Process) -> list[float]:
    """% of one core ``proc`` and each of ``others`` used over the next ``seconds``."""
    procs = [proc, *others]
    before = [p.cpu_times() for p in procs]
    time.sleep(seconds)
    after = [p.cpu_times() for p in procs]
    return [
        100.0 * (a.user + a.system - b.user - b.system) / seconds
        for a, b in zip(after, before, strict=True)
    ]


def scrape(port: int) -> tuple[float, bytes]:
    start = time.perf_counter()
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as response:
        body = response.read()
    return time.perf_counter() - start, body


def sample(body: bytes, name: str) -> float | None:
    for line in body.splitlines():
        if line.startswith(name.encode() + b" "):
            return float(line.split()[1])
    return None


def applied(body: bytes) -> float:
    """Messages the hub applied so far (``edgeml_messages_total`` over kinds)."""
    prefix = b"edgeml_messages_total{"
    return sum(float(line.split()[-1]) for line in body.splitlines() if line.startswith(prefix))


def bare_subscriber_cpu(broker: Broker, seconds: float) -> tuple[float, int]:
    """CPU % of a bare paho subscriber (counts, auto-acks) on the same stream, and its count."""
    got = [0]

    def on_message(_c: mqtt.Client, _u: object, _m: mqtt.MQTTMessage) -> None:
        got[0] += 1

    def on_connect(c: mqtt.Client, *_a: object) -> None:
        c.subscribe([(subscription(k), 1) for k in NODE_TO_HUB])

    sub = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="bare-load", protocol=mqtt.MQTTv5)
    sub.username_pw_set("hub", broker.users["hub"])
    sub.on_connect, sub.on_message = on_connect, on_message
    sub.connect(broker.host, broker.port)
    sub.loop_start()
    time.sleep(3)
    me = psutil.Process()
    before, count = me.cpu_times(), got[0]
    thread_before = time.thread_time()
    time.sleep(seconds)
    after = me.cpu_times()
    # Only the network thread works for the subscriber; the main thread sleeps.
    cpu = after.user + after.system - before.user - before.system
    cpu -= time.thread_time() - thread_before
    n = got[0] - count
    sub.disconnect()
    sub.loop_stop()
    return 100.0 * cpu / seconds, n


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--nodes", type=int, default=10_000)
    parser.add_argument("--procs", type=int, default=4)
    # The node's own defaults, read from its config: "default rates" follow them.
    parser.add_argument("--sample-hz", type=float, default=SourceSection().rate_hz)
    parser.add_argument("--result-s", type=float, default=BatchSection().max_age_s)
    parser.add_argument("--telemetry-s", type=float, default=TelemetrySection().interval_s)
    parser.add_argument("--drift-s", type=float, default=TelemetrySection().drift_interval_s)
    parser.add_argument("--ramp", type=float, default=60.0, help="seconds to connect every node")
    parser.add_argument("--warmup", type=float, default=30.0, help="after the ramp")
    parser.add_argument("--window", type=float, default=60.0)
    parser.add_argument("--no-baseline", action="store_true")
    return parser.parse_args()


def measure(hub: Hub, broker: Broker, args: argparse.Namespace) -> dict[str, float]:
    """Start the nodes, wait for the ramp and warm-up, measure the hub, then the baseline."""
    names = [(f"load-{i:05d}", i) for i in range(args.nodes)]
    proc = psutil.Process(hub.popen.pid)
    found = {"idle_rss": proc.memory_info().rss, "idle_cpu": cpu_percent(proc, 5)[0]}
    assert broker._proc is not None
    broker_proc = psutil.Process(broker._proc.pid)
    run_s = args.ramp + args.warmup + 3 * args.window + 60
    args.stop_at = time.time() + run_s
    ctx = mp.get_context("spawn")
    out: Any = ctx.Queue()
    workers = [
        ctx.Process(
            target=worker, args=(names[k :: args.procs], broker.users, broker.port, args, out)
        )
        for k in range(args.procs)
    ]
    for w in workers:
        w.start()
    time.sleep(args.ramp + args.warmup)
    applied_before = applied(scrape(hub.metrics_port)[1])
    found["cpu"], found["broker_cpu"] = cpu_percent(proc, args.window, broker_proc)
    found["applied_per_s"] = (applied(scrape(hub.metrics_port)[1]) - applied_before) / args.window
    found["rss"] = proc.memory_info().rss
    scrapes = [scrape(hub.metrics_port) for _ in range(5)]
    found["scrape_s"] = statistics.median(t for t, _ in scrapes)
    body = scrapes[-1][1]
    found["scrape_bytes"] = len(body)
    found["online"] = sample(body, 'edgeml_nodes{state="online"}') or 0.0
    last = sample(body, "edgeml_ingest_last_applied_timestamp_seconds")
    found["lag"] = time.time() - last if last is not None else float("nan")
    found["backlog"] = sample(body, "edgeml_ingest_backlog") or 0.0
    found["base_cpu"], found["base_n"] = (float("nan"), 0.0)
    if not args.no_baseline:
        cpu, n = bare_subscriber_cpu(broker, args.window)
        found["base_cpu"], found["base_n"] = cpu, float(n)
    for w in workers:
        w.join(timeout=run_s + 120)
    found["sent"] = float(sum(out.get(timeout=5) for _ in workers))
    return found


def main() -> None:
    args = parse_args()
    users = {"hub": secrets.token_urlsafe(12)}
    users |= {f"load-{i:05d}": secrets.token_urlsafe(9) for i in range(args.nodes)}
    rate = 1 / args.result_s + 1 / args.telemetry_s + 1 / args.drift_s
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with FleetBroker(work / "mq", users) as broker:
            hub = Hub(broker, work / "hub", client_id="hub-load")
            try:
                hub.wait_ready(60)
                wait_for(lambda: "connected to the broker" in hub.output(), 30, "hub", hub)
                f = measure(hub, broker, args)
            finally:
                hub.stop()
            log = hub.log_path.read_text(errors="replace")
    connections = log.count("connected to the broker (session present")
    warnings = [line for line in log.splitlines() if " WARNING " in line or " ERROR " in line]
    n = args.nodes
    print(f"{n:,} nodes in {args.procs} processes, each its own broker account; "
          f"{rate:.2f} msg/s per node = {rate * n:,.0f} msg/s offered "
          f"({f['sent']:,.0f} published in all)")  # fmt: skip
    print(f"hub CPU:   {f['cpu']:6.1f} % of one core over {args.window:.0f} s "
          f"(idle before the nodes: {f['idle_cpu']:.1f} %); the broker's: "
          f"{f['broker_cpu']:.1f} %; the hub applied {f['applied_per_s']:,.0f} msg/s")  # fmt: skip
    idle = f["idle_rss"]
    print(f"hub RSS:   {f['rss'] / 1e6:6.1f} MB; {(f['rss'] - idle) / n:,.0f} bytes "
          f"per node over the hub before the nodes came ({idle / 1e6:.1f} MB)")  # fmt: skip
    print(f"/metrics:  {f['scrape_s']:6.3f} s (median of 5), {f['scrape_bytes'] / 1e6:.2f} MB; "
          f"nodes online {f['online']:,.0f}")  # fmt: skip
    print(f"lag:       {f['lag']:6.2f} s (now minus the newest applied message's ts); "
          f"backlog {f['backlog']:,.0f} messages")  # fmt: skip
    if not args.no_baseline:
        per_s = f["base_n"] / args.window
        print(f"baseline:  bare paho subscriber on the same stream: {f['base_cpu']:6.1f} % of "
              f"one core for {per_s:,.0f} msg/s; hub / baseline CPU = "
              f"{f['cpu'] / f['base_cpu']:.2f} x")  # fmt: skip
    print(f"hub log:   {connections} connection(s) to the broker, {len(warnings)} warnings "
          "or errors" + "".join(f"\n  {line[:200]}" for line in warnings[-5:]))  # fmt: skip
    print(f"cores: {os.cpu_count()}, shared by broker, load generator, hub and baseline")


if __name__ == "__main__":
    main()
