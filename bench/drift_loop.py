"""The drift -> retrain loop end to end: a hub, a pump that settles at a new normal and a
healthy pump, on a real broker; the loop's timeline, the time of each step, and the flag rates
before and after, with the healthy pump as the baseline measured in the same run.

The drifted pump's pressure moves ``--magnitude`` nominal SDs up at the start and stays; the
simulators run ``--speed`` times real time at 20 Hz. A candidate waiting for approval is
approved through ``cloud-hub approve`` at once (``--approval auto`` lets the hub do it).

    .venv/bin/python bench/drift_loop.py [--readings 2000] [--hold 5] [--bake 10]
"""

from __future__ import annotations

import argparse
import itertools
import secrets
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cloud_hub.retraining.policy import Work  # noqa: E402
from cloud_hub.retraining.store import FILE_NAME, LoopStore, StepRecord  # noqa: E402
from schemas.codec import decode  # noqa: E402
from schemas.messages import ResultBatch  # noqa: E402
from schemas.packing import unpack_flags  # noqa: E402
from tests.broker import Broker  # noqa: E402
from tests.integration import models  # noqa: E402
from tests.integration.processes import Hub, Node, node_config  # noqa: E402
from tests.mqtt_clients import close, mqtt_client, receive, subscribe  # noqa: E402

RATE_HZ = 20
SOURCE = 'kind = "sim"\nseed = {seed}\nrate_hz = 20\nspeed = {speed}\nfaults = [{faults}]\n'
DRIFTED, HEALTHY = "bench-drift", "bench-ok"


class Flags:
    """Readings and flagged readings per (node, model version), from the results on the wire."""

    def __init__(self) -> None:
        self.readings: dict[tuple[str, str], int] = defaultdict(int)
        self.flagged: dict[tuple[str, str], int] = defaultdict(int)

    def add(self, batch: ResultBatch) -> None:
        key = (batch.node, batch.model.version)
        self.readings[key] += batch.n
        self.flagged[key] += int(unpack_flags(batch.flags, batch.n).sum())

    def line(self, node: str, version: str) -> str:
        n = self.readings[node, version]
        rate = self.flagged[node, version] / n if n else float("nan")
        return f"{node:<12} pump-pca@{version}  {n:>7,} readings  {rate:7.2%} flagged"

    def rate(self, node: str, version: str) -> float:
        n = self.readings[node, version]
        return self.flagged[node, version] / n if n else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--readings", type=int, default=2000, help="capture size")
    parser.add_argument("--hold", type=float, default=5.0, help="retrain_loop.hold_s")
    parser.add_argument("--bake", type=float, default=10.0, help="retrain_loop.bake_s")
    parser.add_argument("--speed", type=float, default=20.0, help="simulator speed")
    parser.add_argument("--magnitude", type=float, default=4.0, help="pressure offset in SDs")
    parser.add_argument("--approval", choices=["manual", "auto"], default="manual")
    parser.add_argument("--after", type=float, default=20.0, help="seconds watched after")
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        run(Path(tmp), args)


def run(work: Path, args: argparse.Namespace) -> None:
    v1, healthy = models.sim_model_with_reference(work, RATE_HZ)
    broker = Broker(work / "mq", {n: secrets.token_urlsafe(12) for n in ("hub", DRIFTED, HEALTHY)})
    broker.start()
    env = {
        "CLOUD_HUB__RETRAIN_LOOP__ENABLED": "true",
        "CLOUD_HUB__RETRAIN_LOOP__HOLD_S": str(args.hold),
        "CLOUD_HUB__RETRAIN_LOOP__READINGS": str(args.readings),
        "CLOUD_HUB__RETRAIN_LOOP__BAKE_S": str(args.bake),
        "CLOUD_HUB__RETRAIN_LOOP__APPROVAL": args.approval,
        "CLOUD_HUB__RETRAIN_LOOP__COMMAND_TIMEOUT_S": "60",
    }
    hub = Hub(broker, work / "hub", client_id="hub-bench-loop", env=env)
    nodes: list[Node] = []
    watch = mqtt_client(broker, "hub", client_id=f"bench-{secrets.token_hex(3)}")
    flags = Flags()
    try:
        hub.wait_ready()
        hub.cli("register", str(v1), "--reference", str(healthy))
        subscribe(watch, "edgeml/v1/+/result")
        fault = f'"offset:pressure:0:1:{args.magnitude:g}"'
        started = time.time()
        for node, seed, faults in ((DRIFTED, 3, fault), (HEALTHY, 4, "")):
            source = SOURCE.format(seed=seed, speed=args.speed, faults=faults)
            config = node_config(
                work / f"{node}.toml", node=node, broker=broker, model_dir=v1, source=source
            )
            nodes.append(Node(config, exit_when_drained=False))
        approved_at = _drive(hub, watch, flags, started + args.timeout)
        _collect(watch, flags, args.after)
        _report(hub, flags, started, approved_at)
    finally:
        close(watch)
        for proc in nodes:
            proc.stop()
        hub.stop()
        broker.stop()


def _runs(hub: Hub) -> list[Work]:
    store = LoopStore(hub.db.parent / FILE_NAME)
    try:
        return store.runs()
    finally:
        store.close()


def _steps(hub: Hub, work_id: str) -> list[StepRecord]:
    store = LoopStore(hub.db.parent / FILE_NAME)
    try:
        return store.steps(work_id)
    finally:
        store.close()


def _drive(hub: Hub, watch: object, flags: Flags, deadline: float) -> float | None:
    """Approve the drifted pump's candidate when it waits; return once its run has ended."""
    approved_at = None
    while time.time() < deadline:
        _collect(watch, flags, 0.5)
        drifted = [w for w in _runs(hub) if w.node == DRIFTED]
        if any(not w.open for w in drifted):
            return approved_at
        waiting = [w for w in drifted if w.stage == "awaiting_approval"]
        if waiting and approved_at is None:
            approved_at = time.time()
            hub.cli("approve", waiting[0].id)
    raise RuntimeError(f"the loop did not end on {DRIFTED} in time: {_runs(hub)}")


def _collect(watch: object, flags: Flags, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        try:
            (message,) = receive(watch, 1, left)  # type: ignore[arg-type]
        except TimeoutError:
            return
        flags.add(decode("result", bytes(message.payload)))


def _report(hub: Hub, flags: Flags, started: float, approved_at: float | None) -> None:
    print("timeline (seconds since the nodes started):")
    for work in sorted(_runs(hub), key=lambda w: w.started_at):
        for step in _steps(hub, work.id):
            print(f"  {step.ts - started:6.1f}  {work.node:<12} {step.step:<18} {step.detail}")
    drifted = next(w for w in _runs(hub) if w.node == DRIFTED)
    steps = {s.step: s.ts for s in _steps(hub, drifted.id)}
    print("time per step (drifted pump):")
    order = ["capturing", "training", "awaiting_approval", "approved", "promoting"]
    marks = [(name, steps[name]) for name in order if name in steps]
    marks.append((drifted.stage, drifted.updated_at))
    for (name, at), (_, until) in itertools.pairwise(marks):
        print(f"  {name:<18} {until - at:6.1f} s")
    if approved_at is not None and "awaiting_approval" in steps:
        print(f"  (approved by the bench {approved_at - steps['awaiting_approval']:.1f} s after)")
    print("flag rates:")
    for node, version in ((DRIFTED, "1"), (DRIFTED, drifted.candidate_version), (HEALTHY, "1")):
        if version:
            print("  " + flags.line(node, version))
    before, base = flags.rate(DRIFTED, "1"), flags.rate(HEALTHY, "1")
    if drifted.candidate_version:
        after = flags.rate(DRIFTED, drifted.candidate_version)
        print(
            f"drifted pump: after / before = {after / before:.3f}; "
            f"after / healthy pump (baseline) = {after / base if base else float('nan'):.2f}"
        )
    healthy_runs = [w for w in _runs(hub) if w.node == HEALTHY]
    for w in healthy_runs:
        print(f"healthy pump: run {w.id} {w.stage}: {w.note}")
    if not healthy_runs:
        print("healthy pump: no run")
    print(f"run {drifted.id} ended {drifted.stage}; figures: {drifted.figures}")


if __name__ == "__main__":
    main()
