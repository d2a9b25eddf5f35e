"""Chaos runs on real processes: nodes, Mosquitto and the hub killed, restarted and partitioned
while the nodes stream; then every reading the nodes accepted is checked against the hub.

What a node *accepted* is read from its own outbox: before the node starts, a SQLite trigger in
its outbox file copies every row the node inserts into an ``audit`` table, in the same
transaction, so the audit holds exactly the accepted messages of every boot, kills included.
At the end each node has drained (the hub confirmed all it accepted) and the result is:

* produced: readings in the audited result messages;
* counted: the hub's ``edgeml_readings_total`` for the node (restored from its store after
  every hub restart);
* lost: readings of audited messages whose (boot, seq) the hub's stored dedupe state lacks;
* double-counted: counted - (produced - lost).

Used by tests/integration/test_chaos.py (short) and bench/chaos.py (long).
"""

from __future__ import annotations

import secrets
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import msgspec
import numpy as np

from cloud_hub.ingest.snapshot import load_coverage
from cloud_hub.models.onnx_export import save_model, train_model
from cloud_hub.models.trainer import TrainConfig
from edge_node.delivery.outbox import Outbox
from edge_node.sources.simulator import PumpSimulator
from schemas.readings_csv import write_csv
from tests.broker import Broker
from tests.integration.processes import Hub, Node, node_config, wait_for

# Copies every message a node accepts into its outbox (which deletes rows on receipts), so a
# test can count what was produced; tests/multihub.py uses it too.
AUDIT = """
CREATE TABLE IF NOT EXISTS audit (kind TEXT, payload BLOB);
CREATE TRIGGER IF NOT EXISTS audit_put AFTER INSERT ON outbox
BEGIN INSERT INTO audit VALUES (NEW.kind, NEW.payload); END;
"""


class AuditedResult(msgspec.Struct):
    """The fields of an audited result message that the counting needs."""

    boot: str
    seq: int
    n: int


@dataclass
class Tally:
    """One scenario's outcome, summed over its runs and nodes."""

    scenario: str
    runs: int = 0
    produced: int = 0
    counted: int = 0
    lost: int = 0
    double: int = 0

    def add(self, other: Tally) -> None:
        self.runs += other.runs
        self.produced += other.produced
        self.counted += other.counted
        self.lost += other.lost
        self.double += other.double

    def row(self) -> str:
        return (
            f"| {self.scenario} | {self.runs} | {self.produced:,} | {self.counted:,} | "
            f"{self.lost:,} | {self.double:,} |"
        )


HEADER = (
    "| scenario | runs | produced | counted | lost | double-counted |\n|---|---|---|---|---|---|"
)


def make_model_and_csv(work: Path, readings: int) -> tuple[Path, Path]:
    """A model trained on simulated pump readings, and a CSV of ``readings`` more of them."""
    sim = PumpSimulator(seed=5, rate_hz=1.0, speed=0, wall_start=0.0, max_block=readings + 2000)
    block = sim.poll(0.0)
    assert block is not None
    onnx, manifest = train_model(
        block.values[:2000], sim.channels, name="chaos", version="1", trained_by="chaos",
        config=TrainConfig(window=4), now=time.time(),
    )  # fmt: skip
    model = work / "model"
    save_model(model, onnx, manifest)
    csv = work / "readings.csv"
    write_csv(csv, sim.channels, 1_700_000_000.0, 1.0, block.values[2000 : 2000 + readings])
    return model, csv


class Fleet:
    """A broker, a hub and ``nodes`` edge nodes replaying ``csv`` at ``speed`` readings/s."""

    def __init__(
        self,
        work: Path,
        nodes: int,
        source: tuple[Path, Path],
        *,
        speed: float,
        resend_s: float = 2.0,
    ) -> None:
        model, csv = source
        self.work = work
        self.names = [f"chaos-{i}" for i in range(nodes)]
        users = {n: secrets.token_urlsafe(12) for n in ("hub", *self.names)}
        self.broker = Broker(work / "mq", users)
        self.broker.start()
        # Receipts six times as often as the nodes resend, as with the defaults (5 s and 30 s):
        # else nodes send again what the hub holds but has not yet confirmed.
        self.hub_env = (
            {"CLOUD_HUB__INGEST__RECEIPT_INTERVAL_S": str(resend_s / 6)} if resend_s else {}
        )
        self.hub = Hub(self.broker, work / "hub", client_id="hub-chaos", env=self.hub_env)
        self.hub.wait_ready()
        self.configs: list[Path] = []
        for name in self.names:
            self.configs.append(
                node_config(
                    work / f"{name}.toml",
                    node=name,
                    broker=self.broker,
                    model_dir=model,
                    source=f'kind = "csv"\npaths = ["{csv}"]\nspeed = {speed}\n',
                    extra=(
                        f"[outbox]\nresend_s = {resend_s}\nresend_max_s = {4 * resend_s}\n"
                        if resend_s
                        else ""  # the node's defaults (and a release that has no such keys)
                    ),
                )
            )
            outbox = Outbox(work / f"{name}-data" / "outbox.db", max_bytes=1)
            outbox.close()
            with sqlite3.connect(work / f"{name}-data" / "outbox.db") as db:
                db.executescript(AUDIT)
        self.nodes = [Node(c) for c in self.configs]

    # -- faults -----------------------------------------------------------------------------

    def kill_broker(self, down_s: float = 1.0) -> None:
        """kill -9 (nothing saved since its last autosave), restart after ``down_s``."""
        self.broker.kill()
        time.sleep(down_s)
        self.broker.start()

    def kill_hub(self, down_s: float = 1.0) -> None:
        """kill -9 of ``cloud-hub serve``; a new one starts from its store."""
        self.hub.kill()
        time.sleep(down_s)
        self.hub = Hub(self.broker, self.work / "hub", client_id="hub-chaos", env=self.hub_env)
        self.hub.wait_ready()

    def kill_node(self, i: int, down_s: float = 0.5) -> None:
        """kill -9 of node ``i``; it restarts with a new boot and the same outbox."""
        self.nodes[i].kill()
        time.sleep(down_s)
        self.nodes[i] = Node(self.configs[i])

    def partition(self, seconds: float) -> None:
        """Freeze the broker (SIGSTOP) for ``seconds``: every connection hangs, then resumes."""
        self.broker.pause()
        try:
            time.sleep(seconds)
        finally:
            self.broker.resume()

    # -- outcome ----------------------------------------------------------------------------

    def finish(self, scenario: str, timeout: float = 120.0) -> Tally:
        """Wait until every node has drained and exited, then compare with the hub."""
        try:
            wait_for(
                lambda: not any(n.alive() for n in self.nodes),
                timeout,
                "every node to drain",
                self.hub,
                *self.nodes,
            )
            counted = {n: int(self.hub.value("edgeml_readings_total", node=n)) for n in self.names}
        finally:
            self.close()
        tally = Tally(scenario, runs=1)
        with sqlite3.connect(f"file:{self.hub.db}?mode=ro", uri=True) as hub_db:
            for name in self.names:
                produced, lost = self._audit(name, hub_db, counted[name])
                tally.produced += produced
                tally.counted += counted[name]
                tally.lost += lost
                tally.double += max(0, counted[name] - (produced - lost))
        return tally

    def close(self) -> None:
        for node in self.nodes:
            node.stop()
        self.hub.stop()
        self.broker.stop()

    def _audit(self, name: str, hub_db: sqlite3.Connection, counted: int) -> tuple[int, int]:
        """(readings the node accepted, readings of those the hub never applied)."""
        with sqlite3.connect(self.work / f"{name}-data" / "outbox.db") as db:
            rows = db.execute("SELECT payload FROM audit WHERE kind = 'result'")
            accepted = [msgspec.msgpack.decode(p, type=AuditedResult) for (p,) in rows]
        produced = sum(r.n for r in accepted)
        try:
            stored = hub_db.execute("SELECT boot, data FROM streams WHERE node = ?", (name,))
        except sqlite3.OperationalError:
            # A hub without durable dedupe state (an older release): count what is missing.
            return produced, max(0, produced - counted)
        seen = {boot: load_coverage(data).intervals() for boot, data in stored}
        return produced, sum(r.n for r in accepted if not _covered(seen.get(r.boot, []), r.seq))


def _covered(intervals: list[tuple[int, int]], seq: int) -> bool:
    starts = np.array([s for s, _ in intervals], dtype=np.int64)
    i = int(np.searchsorted(starts, seq, side="right")) - 1
    return i >= 0 and seq < intervals[i][1]
