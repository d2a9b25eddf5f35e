"""A good and a bad model rolled out in waves over a fleet of real node processes.

Real Mosquitto, real ``cloud-hub serve`` and ``--nodes`` real ``edge-node`` processes (default
20), each a simulated pump scoring 20 readings/s. The good model is the fleet's model again
under a new version; the bad one is the same graph with a tenth of the threshold, so it flags
far more. For each wave the bench prints when its deploys went out, how long until the gate
decided, what the gate saw (the wave's flag rate and score distance against the figures before
the switch) and its decision; for the bad model, when it stopped and how long the rollbacks
took. The baseline, measured in the same run, is a plain ``cloud-hub deploy`` to one node
(command to ``applied``): each wave's time is printed as bake + overhead, and the overhead as
a ratio to that deploy.

    .venv/bin/python bench/rollout.py [--nodes 20] [--bake 5] [--waves 1,10%,50%,100%]
"""

from __future__ import annotations

import argparse
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import onnxruntime as ort  # noqa: E402

from cloud_hub.cli.models import register_folder  # noqa: E402
from cloud_hub.ingest.registry import Registry, RegistryError  # noqa: E402
from cloud_hub.rollouts.state import Rollout  # noqa: E402
from cloud_hub.rollouts.store import RolloutStore  # noqa: E402
from edge_node.sources.simulator import PumpSimulator  # noqa: E402
from schemas.manifest import decode_manifest  # noqa: E402
from tests.broker import Broker  # noqa: E402
from tests.integration import models  # noqa: E402
from tests.integration.processes import Hub, Node, node_config, wait_for  # noqa: E402

RATE_HZ = 20
SIM = 'kind = "sim"\nseed = {seed}\nrate_hz = 20\nspeed = 1\n'


def healthy_seeds(model: Path, count: int) -> list[int]:
    """Simulated pumps the model flags under 5 % of (some seeds are pumps it finds faulty)."""
    manifest = decode_manifest((model / "manifest.json").read_bytes())
    session = ort.InferenceSession(str(model / "model.onnx"), providers=["CPUExecutionProvider"])
    window = manifest.input.window
    seeds: list[int] = []
    seed = 0
    while len(seeds) < count:
        seed += 1
        sim = PumpSimulator(seed=seed, rate_hz=RATE_HZ, speed=0, wall_start=time.time())
        values = sim.read(600).values.astype(np.float32)
        windows = np.lib.stride_tricks.sliding_window_view(values, window, axis=0)
        scores = session.run(None, {manifest.input.name: windows.transpose(0, 2, 1).copy()})[0]
        if float(np.mean(scores > manifest.threshold)) < 0.05:
            seeds.append(seed)
    return seeds


def load(hub: Hub, rollout_id: str) -> Rollout:
    store = RolloutStore(hub.db.parent / "rollouts.db")
    try:
        found = store.load(rollout_id)
    finally:
        store.close()
    assert found is not None
    return found


def follow(hub: Hub, rollout_id: str, timeout: float) -> tuple[Rollout, dict[int, float]]:
    """Poll the store until the rollout ends; the time each wave's deploys went out."""
    sent: dict[int, float] = {}
    deadline = time.time() + timeout
    while time.time() < deadline:
        rollout = load(hub, rollout_id)
        if rollout.phase == "bake" and rollout.wave not in sent:
            sent[rollout.wave] = rollout.phase_started
        if rollout.state not in ("running", "paused"):
            return rollout, sent
        time.sleep(0.2)
    raise TimeoutError(f"rollout {rollout_id} did not end in {timeout} s")


def report(rollout: Rollout, sent: dict[int, float], bake: float, baseline: float) -> None:
    """One line per wave, then how it ended."""
    gates = {d.wave: d for d in rollout.decisions if d.kind == "gate"}
    print(f"  {rollout.ref}: {rollout.state}; {rollout.updated()}/{len(rollout.nodes)} on it")
    print(
        "  wave nodes  deployed->decided  overhead  /deploy  flags before->after"
        "  distance (own / other nodes)"
    )
    for wave, names in enumerate(rollout.waves):
        decision = gates.get(wave)
        if decision is None or wave not in sent:
            print(f"  {wave + 1:>4} {len(names):>5}  not reached")
            continue
        took = decision.at - sent[wave]
        figures = decision.detail.get("figures", {})
        before, after = figures.get("before", {}), figures.get("after", {})
        checks = {c["name"]: c for c in decision.detail.get("checks", [])}
        distance = checks.get("score_distance", {})
        own, natural = distance.get("value", float("nan")), distance.get("baseline", float("nan"))
        print(
            f"  {wave + 1:>4} {len(names):>5}  {took:>14.2f} s  {took - bake:>6.2f} s"
            f"  {(took - bake) / baseline:>6.2f}x  {_rate(before):>8.4f} -> {_rate(after):.4f}"
            f"  {own:.3f} / {natural:.3f}  {'PASS' if decision.passed else 'FAIL'}"
        )
    if rollout.state == "stopped":
        print(f"  stopped: {rollout.reason[:300]}")


def rollbacks(hub: Hub, rollout_id: str, timeout: float = 60.0) -> None:
    """How long after the stop decision every rolled-back node had answered (polled, 0.2 s)."""
    deadline = time.time() + timeout
    rollout = load(hub, rollout_id)
    while time.time() < deadline and any(r.step == "rollback_sent" for r in rollout.nodes.values()):
        time.sleep(0.2)
        rollout = load(hub, rollout_id)
    seen = time.time()
    stop = next(d.at for d in rollout.decisions if d.passed is False)
    rolled = [r.node for r in rollout.nodes.values() if r.step == "rolled_back"]
    left = [r.node for r in rollout.nodes.values() if r.step == "rollback_sent"]
    print(
        f"  rolled back without a person: {len(rolled)} nodes within {seen - stop:.2f} s of the "
        f"stop{'; still waiting: ' + ', '.join(left) if left else ''}"
    )


def _rate(figures: dict[str, float]) -> float:
    scored = figures.get("readings", 0) - figures.get("unscored", 0)
    return figures.get("flagged", 0) / scored if scored else float("nan")


def plain_deploy(hub: Hub, node: str, rounds: int) -> float:
    """Median seconds of ``cloud-hub deploy`` (v2) + ``rollback`` to one node: the baseline."""
    times = []
    for _ in range(rounds):
        start = time.monotonic()
        done = hub.cli("deploy", "--model", "pump-pca", "--version", "2", "--node", node,
                       "--settle", "0")  # fmt: skip
        times.append(time.monotonic() - start)
        assert done.returncode == 0, done.stdout + done.stderr
        hub.cli("rollback", "--node", node)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=20)
    parser.add_argument("--bake", type=float, default=5.0)
    parser.add_argument("--waves", default="1,10%,50%,100%")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the plain deploy")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-rollout-"))
    names = [f"pump-{i:02d}" for i in range(1, args.nodes + 1)]
    broker = Broker(work / "mosquitto", {n: secrets.token_urlsafe(16) for n in ("hub", *names)})
    broker.start()
    v1 = models.sim_model(work / "v1", rate_hz=RATE_HZ)
    seeds = healthy_seeds(v1, args.nodes)
    env = {"CLOUD_HUB__ROLLOUT__TICK_S": "0.2", "CLOUD_HUB__INGEST__OFFLINE_AFTER_S": "20"}
    hub = Hub(broker, work / "hub", client_id="hub-bench-rollout", env=env)
    nodes: list[Node] = []
    try:
        hub.wait_ready(60)
        for name, seed in zip(names, seeds, strict=True):
            config = node_config(work / f"{name}.toml", node=name, broker=broker, model_dir=v1,
                                 source=SIM.format(seed=seed))  # fmt: skip
            nodes.append(Node(config, exit_when_drained=False))
        for version, factor in (("2", 1.0), ("3", 0.1)):
            folder = models.retuned(v1, work / f"v{version}", version, threshold_factor=factor)
            register_folder(hub.db.parent / "models", folder, time.time())
        wait_for(lambda: _registered(hub) == args.nodes, 120, "every node's birth", hub)
        print(f"{args.nodes} edge-node processes (simulated pumps, seeds {seeds}), {RATE_HZ} Hz")
        baseline = plain_deploy(hub, names[0], args.rounds)
        print(f"baseline: cloud-hub deploy + wait for applied to one node, median {baseline:.2f} s")
        for label, version in (("good model", "2"), ("bad model (threshold / 10)", "3")):
            out = hub.cli("rollout", "start", "--model", "pump-pca", "--version", version,
                          "--all", "--waves", args.waves, "--bake", f"{args.bake}s")  # fmt: skip
            rollout_id = out.stdout.split()[1].rstrip(":")
            started = time.time()
            rollout, sent = follow(hub, rollout_id, timeout=600)
            print(f"{label}: rollout {rollout_id}, bake {args.bake:g} s, waves {args.waves}, "
                  f"ended after {time.time() - started:.1f} s")  # fmt: skip
            report(rollout, sent, args.bake, baseline)
            if rollout.state == "stopped":
                rollbacks(hub, rollout_id)
    finally:
        for node in nodes:
            node.popen.terminate()
        for node in nodes:
            node.stop()
        hub.stop()
        broker.stop()


def _registered(hub: Hub) -> int:
    try:
        registry = Registry(hub.db, readonly=True)
    except RegistryError:
        return 0
    try:
        return len(registry.nodes())
    finally:
        registry.close()


if __name__ == "__main__":
    main()
