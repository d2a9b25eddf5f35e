"""Shadow runs on a real broker: the CLI starts a run, the node scores a candidate beside its
model and reports both arms, the hub keeps the report; the candidate's flags raise nothing;
a CPU budget and ``shadow stop`` end runs.

One hub and one scoring node (shadow-1) go through the tests in order.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass

import paho.mqtt.client as mqtt
import pytest

from schemas.codec import decode
from schemas.messages import Event, ModelRef, ResultBatch, ShadowReport
from tests.broker import Broker
from tests.integration import models
from tests.integration.processes import Hub, Node, node_config, wait_for
from tests.mqtt_clients import close, mqtt_client, state, subscribe

pytestmark = pytest.mark.integration

NODE = "shadow-1"
# Real time: as fast as it can go (speed 0) the pump runs through hours of its load cycle in
# seconds, parts of which the model flags (about 11 % for this seed), and the run's "the active
# model is quiet" would depend on how fast the machine is.
SIM = 'kind = "sim"\nseed = 3\nrate_hz = 50\nspeed = 1\n'
FINAL = {"done", "stopped", "over_budget", "failed"}


@dataclass
class Rig:
    hub: Hub
    node: Node
    watcher: mqtt.Client
    seen: list[object]

    def cli(self, *args: str) -> tuple[int, str]:
        done = self.hub.cli(*args, timeout=60.0)
        return done.returncode, done.stdout + done.stderr

    def collect(self) -> None:
        """Decode what the watcher received of the node's results, events and reports."""
        messages = state(self.watcher).messages
        while not messages.empty():
            message = messages.get_nowait()
            kind = message.topic.rsplit("/", 1)[-1]
            if kind in ("result", "event", "shadow"):
                self.seen.append(decode(kind, bytes(message.payload)))

    def reports(self, command: str) -> list[ShadowReport]:
        self.collect()
        return [m for m in self.seen if isinstance(m, ShadowReport) and m.command == command]

    def final(self, command: str, timeout: float) -> ShadowReport:
        def ended() -> bool:
            return any(r.state in FINAL for r in self.reports(command))

        wait_for(ended, timeout, f"the final report of shadow {command}", self.node, self.hub)
        return next(r for r in self.reports(command) if r.state in FINAL)

    def start(self, version: str, *options: str) -> str:
        code, out = self.cli(
            "shadow", "start", "--node", NODE, "--model", "pump-pca", "--version", version,
            *options,
        )  # fmt: skip
        assert code == 0, out
        assert f"{NODE}  applied   pump-pca@{version}" in out, out
        (line,) = [x for x in out.splitlines() if x.startswith(f"{NODE}  shadow ")]
        return line.split()[2]


@pytest.fixture(scope="module")
def rig(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    work = tmp_path_factory.mktemp("shadow")
    v1 = models.sim_model(work / "v1")
    built = [
        v1,
        models.padded(v1, work / "v2", "2", 1000),
        models.with_threshold(v1, work / "v3", "3", 1e-9),
    ]
    hub = Hub(broker, work / "hub", client_id="hub-shadow")
    hub.wait_ready()
    for folder in built:
        done = hub.cli("register", str(folder))
        assert done.returncode == 0, done.stdout + done.stderr
    config = node_config(work / f"{NODE}.toml", node=NODE, broker=broker, model_dir=v1, source=SIM)
    node = Node(config, exit_when_drained=False)
    watcher = mqtt_client(broker, "hub", client_id=f"watch-{secrets.token_hex(3)}")
    subscribe(watcher, f"edgeml/v1/{NODE}/+")
    rig = Rig(hub, node, watcher, [])
    try:

        def scoring() -> bool:
            rig.collect()
            return bool(rig.seen)

        wait_for(scoring, 20, "the node's first results", node)
        yield rig
    finally:
        close(watcher)
        node.stop()
        hub.stop()


def test_a_candidate_that_flags_everything_raises_nothing_and_its_report_reaches_the_hub(
    rig: Rig,
) -> None:
    command = rig.start("3", "--duration", "5s", "--cpu-budget", "1")
    report = rig.final(command, timeout=20)
    assert report.state == "done", report
    active, candidate = report.active, report.candidate
    assert (active.model, candidate.model) == (ModelRef("pump-pca", "1"), ModelRef("pump-pca", "3"))
    assert active.readings == candidate.readings > 100  # 50 readings/s for 5 s, the same ones
    assert candidate.unscored == 0
    # The candidate's alarm rule opens on (almost) every reading; the active model is quiet.
    assert candidate.flagged > 0.9 * candidate.readings
    assert active.flagged < 0.1 * active.readings
    assert report.agreement < 0.2
    assert 0 < report.cpu_share < 1
    interval = [r for r in rig.reports(command) if r.state == "running"]
    assert interval, "the node reports every drift interval (2 s here) while the run lasts"
    # Nothing the node published came from the candidate.
    published = [m for m in rig.seen if isinstance(m, ResultBatch | Event)]
    assert published and {m.model for m in published} == {ModelRef("pump-pca", "1")}

    # serve kept the final report; status reads it from the registry.
    def stored() -> bool:
        code, out = rig.cli("shadow", "status", "--node", NODE, "--json")
        return code == 0 and json.loads(out)[0]["state"] == "done"

    wait_for(stored, 10, "the final report in the hub's registry", rig.hub)
    code, out = rig.cli("shadow", "status", "--node", NODE)
    assert code == 0 and "active pump-pca@1" in out and "candidate pump-pca@3" in out, out
    assert rig.hub.value("edgeml_shadow_runs", state="done") == 1  # the node's newest report
    assert rig.hub.value("edgeml_shadow_runs", state="running") == 0


def test_a_candidate_over_its_cpu_budget_is_stopped(rig: Rig) -> None:
    command = rig.start("2", "--duration", "20s", "--cpu-budget", "0.00001")
    started = time.monotonic()
    report = rig.final(command, timeout=15)
    assert report.state == "over_budget", report
    assert "above the budget" in report.reason
    assert time.monotonic() - started < 10  # judged over 2 s (a tenth of 20 s), not 20 s


def test_stop_ends_a_running_shadow(rig: Rig) -> None:
    command = rig.start("2", "--duration", "10m")
    code, out = rig.cli("shadow", "stop", "--node", NODE)
    assert code == 0, out
    report = rig.final(command, timeout=10)
    assert report.state == "stopped" and report.reason.startswith("stopped by"), report
    assert report.candidate.readings > 0
