"""Several hubs on one stream: real Mosquitto, PostgreSQL, ``cloud-hub serve`` processes in one
share group and ``edge-node`` processes replaying a CSV; then every reading the nodes accepted
is checked against the shared store.

What a node *accepted* is read from its own outbox: a SQLite trigger, installed before the
node starts, copies every row the node inserts into an ``audit`` table in the same
transaction. At the end every node has drained (some hub confirmed all it accepted):

* produced: readings in the audited result messages, per node;
* counted: the node's ``readings`` in the store (its snapshot: ``node_state``, ``node_live``);
* lost: readings of audited messages whose (boot, seq) the store's streams lack;
* double-counted: counted - (produced - lost).

Used by tests/integration/test_multihub.py (short) and bench/multihub.py (long).
"""

from __future__ import annotations

import secrets
import signal
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path

import msgspec
import psycopg

from cloud_hub.ingest.coverage import Coverage
from cloud_hub.ingest.snapshot import load_coverage, load_node
from cloud_hub.store.rows import SELECT_STATES
from edge_node.delivery.outbox import Outbox
from tests.broker import Broker
from tests.chaos import AUDIT, AuditedResult
from tests.integration.processes import Hub, Node, node_config, wait_for


@dataclass
class Outcome:
    """Per node: produced, counted, lost, double-counted; and each hub's fleet total."""

    produced: dict[str, int] = field(default_factory=dict)
    counted: dict[str, int] = field(default_factory=dict)
    lost: dict[str, int] = field(default_factory=dict)
    double: dict[str, int] = field(default_factory=dict)
    fleet_totals: list[float] = field(default_factory=list)


class HubGroup:
    """A broker, ``hubs`` hubs sharing the stream and a PostgreSQL store, and ``nodes`` nodes
    replaying ``csv`` at ``speed`` readings/s."""

    def __init__(
        self,
        work: Path,
        store_url: str,
        *,
        hubs: int,
        nodes: int,
        source: tuple[Path, Path],
        speed: float,
        resend_s: float = 1.0,
        batch: int = 16,
        group: str = "hubs",
    ) -> None:
        model, csv = source
        self.work = work
        self.url = store_url
        self.names = [f"mh-{i}" for i in range(nodes)]
        users = {n: secrets.token_urlsafe(12) for n in ("hub", *self.names)}
        self.broker = Broker(work / "mq", users)
        self.broker.start()
        self.env = {
            "CLOUD_HUB__STORE__URL": store_url,
            "CLOUD_HUB__STORE__REFRESH_S": "0.5",
            "CLOUD_HUB__MQTT__SHARE_GROUP": group,
            # Receipts six times as often as the nodes resend, as with the defaults.
            "CLOUD_HUB__INGEST__RECEIPT_INTERVAL_S": str(resend_s / 6),
        }
        self.hubs = [self._hub(i) for i in range(hubs)]
        for hub in self.hubs:
            hub.wait_ready()
        extra = (
            f"[outbox]\nresend_s = {resend_s}\nresend_max_s = {2 * resend_s}\n"
            f"[batch]\nmax_readings = {batch}\n"
        )
        self.configs = [self._node_config(n, model, csv, speed, extra) for n in self.names]
        self.nodes: list[Node] = []

    def _hub(self, i: int) -> Hub:
        return Hub(self.broker, self.work / f"hub-{i}", client_id=f"hub-{i}", env=self.env)

    def _node_config(self, name: str, model: Path, csv: Path, speed: float, extra: str) -> Path:
        path = node_config(
            self.work / f"{name}.toml",
            node=name,
            broker=self.broker,
            model_dir=model,
            source=f'kind = "csv"\npaths = ["{csv}"]\nspeed = {speed}\n',
            extra=extra,
        )
        Outbox(self.work / f"{name}-data" / "outbox.db", max_bytes=1).close()
        with sqlite3.connect(self.work / f"{name}-data" / "outbox.db") as db:
            db.executescript(AUDIT)
        return path

    def start_nodes(self) -> None:
        """Start every node (each exits once its file is replayed and its outbox drained)."""
        self.nodes = [Node(c) for c in self.configs]

    def kill_hub(self, i: int, frozen_s: float = 0.0) -> None:
        """kill -9 of hub ``i``, after ``frozen_s`` frozen (SIGSTOP: it holds what the broker
        delivered to it, unacked); what it had not committed stays in its broker session."""
        hub = self.hubs[i]
        if frozen_s:
            hub.popen.send_signal(signal.SIGSTOP)
            time.sleep(frozen_s)
        hub.kill()

    def restart_hub(self, i: int) -> None:
        """Start hub ``i`` again with its client id: the broker hands it its session's queue."""
        self.hubs[i] = self._hub(i)
        self.hubs[i].wait_ready()

    def wait_drained(self, timeout: float) -> float:
        """Wait until every node has drained and exited; the seconds it took."""
        start = time.monotonic()
        wait_for(
            lambda: not any(n.alive() for n in self.nodes),
            timeout,
            "every node to drain",
            *self.hubs,
            *self.nodes,
        )
        return time.monotonic() - start

    def live_hubs(self) -> list[Hub]:
        """The hubs still running."""
        return [h for h in self.hubs if h.alive()]

    def outcome(self) -> Outcome:
        """Produced, counted, lost and double-counted per node; each live hub's fleet total."""
        out = Outcome()
        with psycopg.connect(self.url) as db:
            for name in self.names:
                accepted = self._accepted(name)
                row = db.execute(f"{SELECT_STATES} WHERE s.node = %s", (name,))
                stored = row.fetchone()
                counted = load_node(stored[0], stored[1:]).readings if stored else 0
                streams = db.execute("SELECT boot, data FROM streams WHERE node = %s", (name,))
                seen = {boot: load_coverage(data) for boot, data in streams.fetchall()}
                produced = sum(r.n for r in accepted)
                lost = sum(r.n for r in accepted if not _covered(seen.get(r.boot), r.seq))
                out.produced[name] = produced
                out.counted[name] = counted
                out.lost[name] = lost
                out.double[name] = max(0, counted - (produced - lost))
        out.fleet_totals = [h.value("edgeml_fleet_readings_total") for h in self.live_hubs()]
        return out

    def _accepted(self, name: str) -> list[AuditedResult]:
        with sqlite3.connect(self.work / f"{name}-data" / "outbox.db") as db:
            rows = db.execute("SELECT payload FROM audit WHERE kind = 'result'").fetchall()
        return [msgspec.msgpack.decode(p, type=AuditedResult) for (p,) in rows]

    def close(self) -> None:
        """Stop every process that is still running."""
        for node in self.nodes:
            node.stop()
        for hub in self.hubs:
            hub.stop()
        self.broker.stop()


def _covered(coverage: Coverage | None, seq: int) -> bool:
    return coverage is not None and seq in coverage
