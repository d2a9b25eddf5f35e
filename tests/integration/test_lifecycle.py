"""Model lifecycle on a real broker: deploy, rollback, retrain and their failure modes.

One hub and one continuously scoring node (life-1) go through the tests of this module in
order; each test asserts what changed. The node must never stop scoring: the last test checks
that the hub saw every message and every reading of it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import paho.mqtt.client as mqtt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from schemas.codec import decode, encode
from schemas.manifest import decode_manifest
from schemas.messages import Ack, Command, Deploy, Ping, ResultBatch
from schemas.packing import unpack_f32
from schemas.signing import sign
from tests.broker import Broker
from tests.integration import models
from tests.integration.processes import Hub, Node, node_config, signed, wait_for
from tests.mqtt_clients import close, mqtt_client, receive, state, subscribe

pytestmark = pytest.mark.integration

SIM = 'kind = "sim"\nseed = {seed}\nrate_hz = 50\nspeed = 1\n'
FAST_RETRIES = "[commands]\nchunk_timeout_s = 2.0\n"
FINAL = {"applied", "rejected", "failed"}


@dataclass
class Fleet:
    broker: Broker
    hub: Hub
    node: Node
    watcher: mqtt.Client
    models: dict[str, Path]

    def cli(self, *args: str, timeout: float = 90.0) -> tuple[int, str]:
        done = self.hub.cli(*args, timeout=timeout)
        return done.returncode, done.stdout + done.stderr

    def next_result(self, timeout: float = 10.0) -> ResultBatch:
        """The first result batch of life-1 published after this call."""
        _drain(self.watcher)
        batch: ResultBatch = _next(self.watcher, "edgeml/v1/life-1/result", "result", timeout)
        return batch

    def queued_results(self) -> list[ResultBatch]:
        """Result batches received since the last drain (other messages are dropped)."""
        messages = state(self.watcher).messages
        out: list[ResultBatch] = []
        while not messages.empty():
            message = messages.get_nowait()
            if message.topic.endswith("/result"):
                out.append(decode("result", bytes(message.payload)))
        return out

    def acks_of(self, command: str, count: int, timeout: float = 15.0) -> list[Ack]:
        """The next ``count`` acks of ``command``."""
        acks: list[Ack] = []
        deadline = time.monotonic() + timeout
        while len(acks) < count:
            ack = _next(
                self.watcher, "edgeml/v1/life-1/ack", "ack", max(deadline - time.monotonic(), 0.1)
            )
            if ack.command == command:
                acks.append(ack)
        return acks

    def acks_until_settled(self, command: str, timeout: float, settle: float) -> list[Ack]:
        """Acks of ``command`` until one is final, then for ``settle`` seconds more."""
        acks: list[Ack] = []
        deadline = time.monotonic() + timeout
        while not any(a.status in FINAL for a in acks):
            acks += self.acks_of(command, 1, max(deadline - time.monotonic(), 0.1))
        quiet_until = time.monotonic() + settle
        while (left := quiet_until - time.monotonic()) > 0:
            try:
                acks += self.acks_of(command, 1, left)
            except TimeoutError:
                break
        return acks


def _drain(client: mqtt.Client) -> None:
    messages = state(client).messages
    while not messages.empty():
        messages.get_nowait()


def _next(client: mqtt.Client, topic: str, kind: str, timeout: float) -> Any:
    """The next message on ``topic``, decoded as ``kind``."""
    deadline = time.monotonic() + timeout
    while True:
        (message,) = receive(client, 1, max(deadline - time.monotonic(), 0.1))
        if message.topic == topic:
            return decode(kind, bytes(message.payload))


@pytest.fixture(scope="module")
def fleet(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    work = tmp_path_factory.mktemp("lifecycle")
    v1 = models.train(work / "v1", "1", slice(0, 3000))
    built = {"1": v1, "2": models.padded(v1, work / "v2", "2", 300_000)}
    hub = Hub(broker, work / "hub", client_id="hub-lifecycle")
    hub.wait_ready()
    for folder in built.values():
        done = hub.cli("register", str(folder))
        assert done.returncode == 0, done.stdout + done.stderr
    config = node_config(
        work / "life-1.toml",
        node="life-1",
        broker=broker,
        model_dir=v1,
        source=SIM.format(seed=1),
        extra=FAST_RETRIES,
    )
    node = Node(config, exit_when_drained=False)
    watcher = mqtt_client(broker, "hub", client_id=f"watch-{secrets.token_hex(3)}")
    subscribe(watcher, "edgeml/v1/life-1/+")
    fleet = Fleet(broker, hub, node, watcher, built)
    try:
        fleet.next_result(15)
        yield fleet
    finally:
        close(watcher)
        node.stop()
        hub.stop()


def _register(fleet: Fleet, folder: Path) -> None:
    code, out = fleet.cli("register", str(folder))
    assert code == 0, out


def test_deploy_of_a_model_larger_than_a_broker_message(fleet: Fleet) -> None:
    assert (fleet.models["2"] / "model.onnx").stat().st_size > 262_144  # mosquitto.conf limit
    code, out = fleet.cli("deploy", "--model", "pump-pca", "--version", "2", "--node", "life-1")
    assert code == 0, out
    assert "applied" in out
    assert fleet.next_result().model.version == "2"


def test_rollback_returns_to_the_previous_model(fleet: Fleet) -> None:
    code, out = fleet.cli("rollback", "--node", "life-1")
    assert code == 0, out
    assert fleet.next_result().model.version == "1"


def test_the_same_command_twice_is_applied_once(fleet: Fleet) -> None:
    manifest = decode_manifest((fleet.models["2"] / "manifest.json").read_bytes())
    size = (fleet.models["2"] / "model.onnx").stat().st_size
    now = time.time()
    command = Deploy(
        node="life-1",
        boot="test",
        seq=1,
        ts=now,
        id=secrets.token_hex(6),
        issued_at=now,
        expires_at=now + 120,
        manifest=manifest,
        size=size,
        chunk_size=65536,
        chunks=-(-size // 65536),
    )
    fleet.cli("rollback", "--node", "life-1")  # so that deploying 2 is a change again
    sender = mqtt_client(fleet.broker, "hub", client_id=f"twice-{secrets.token_hex(3)}")
    try:
        _drain(fleet.watcher)
        for _ in range(2):
            sender.publish("edgeml/v1/life-1/cmd", encode(signed(command)), qos=1)
        acks = fleet.acks_until_settled(command.id, timeout=40, settle=3.0)
    finally:
        close(sender)
    applied = [a for a in acks if a.status == "applied" and a.detail.get("duplicate") != "true"]
    assert len(applied) == 1, acks
    assert any(a.detail.get("duplicate") == "true" for a in acks), acks
    assert fleet.next_result().model.version == "2"


def test_an_expired_command_is_refused(fleet: Fleet) -> None:
    now = time.time()
    ping = Ping(
        node="life-1",
        boot="test",
        seq=2,
        ts=now,
        id=secrets.token_hex(6),
        issued_at=now - 120,
        expires_at=now - 60,
    )
    sender = mqtt_client(fleet.broker, "hub", client_id=f"late-{secrets.token_hex(3)}")
    try:
        _drain(fleet.watcher)
        sender.publish("edgeml/v1/life-1/cmd", encode(signed(ping)), qos=1)
        (ack,) = fleet.acks_of(ping.id, 1)
    finally:
        close(sender)
    assert ack.status == "rejected"
    assert "expired" in ack.reason


@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        (lambda c: c, "unsigned command"),
        (lambda c: sign(c, Ed25519PrivateKey.generate()), "not made by a trusted hub key"),
        (
            lambda c: msgspec.structs.replace(signed(c), expires_at=c.expires_at + 1e9),
            "bad command signature",
        ),
    ],
    ids=["unsigned", "forged", "tampered"],
)
def test_a_command_without_the_hubs_signature_is_refused(
    fleet: Fleet, forge: Callable[[Ping], Command], reason: str
) -> None:
    now = time.time()
    ping = Ping(
        node="life-1",
        boot="test",
        seq=3,
        ts=now,
        id=secrets.token_hex(6),
        issued_at=now,
        expires_at=now + 60,
    )
    # The hub's own broker account: the signature, not the password, is what a node trusts.
    sender = mqtt_client(fleet.broker, "hub", client_id=f"forger-{secrets.token_hex(3)}")
    try:
        _drain(fleet.watcher)
        sender.publish("edgeml/v1/life-1/cmd", encode(forge(ping)), qos=1)
        (ack,) = fleet.acks_of(ping.id, 1)
    finally:
        close(sender)
    assert ack.status == "rejected" and reason in ack.reason


def test_a_corrupt_artifact_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    honest = models.padded(fleet.models["1"], tmp_path / "v5", "5", 1000)
    _register(fleet, honest)
    stored = next(fleet.hub.db.parent.rglob("pump-pca/5/model.onnx"))
    data = bytearray(stored.read_bytes())
    data[-100] ^= 0xFF  # bit rot in the hub's copy, after registration
    stored.write_bytes(bytes(data))
    before = fleet.next_result().model
    code, out = fleet.cli("deploy", "--model", "pump-pca", "--version", "5", "--node", "life-1")
    assert code != 0
    assert "sha256" in out
    assert fleet.next_result().model == before


def test_a_model_with_the_wrong_input_shape_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    _register(fleet, models.wrong_window(tmp_path / "v6", "6"))
    before = fleet.next_result().model
    code, out = fleet.cli("deploy", "--model", "pump-pca", "--version", "6", "--node", "life-1")
    assert code != 0
    assert "shape" in out
    assert fleet.next_result().model == before


def test_a_model_scoring_nan_is_rolled_back(fleet: Fleet, tmp_path: Path) -> None:
    _register(fleet, models.nan_on_real_data(fleet.models["1"], tmp_path / "v7", "7"))
    before = fleet.next_result().model
    code, out = fleet.cli("deploy", "--model", "pump-pca", "--version", "7", "--node", "life-1")
    assert code != 0
    assert "rolled back" in out
    during = fleet.queued_results()
    if not during:  # the deploy took less than one batch age
        during = [_next(fleet.watcher, "edgeml/v1/life-1/result", "result", 5)]
    for batch in during:  # the block the bad model scored was scored again by the old one
        assert batch.model == before
        assert np.isfinite(unpack_f32(batch.scores)).all()
    assert fleet.next_result().model == before


def test_no_message_or_reading_was_lost_along_the_way(fleet: Fleet) -> None:
    hub = fleet.hub
    assert fleet.node.alive(), fleet.node.output()
    readings = hub.value("edgeml_readings_total", node="life-1")
    wait_for(
        lambda: hub.value("edgeml_readings_total", node="life-1") > readings,
        10,
        "scoring to go on",
        hub,
        fleet.node,
    )
    assert hub.value("edgeml_seq_gaps", node="life-1") == 0
    assert hub.value("edgeml_missing_readings", node="life-1") == 0
    assert hub.value("edgeml_model_rollbacks_total", node="life-1") >= 1


@dataclass
class Solo:
    """A hub and one node of a test's own, with a client watching the node's topics."""

    hub: Hub
    config: Path
    watcher: mqtt.Client
    nodes: list[Node]

    def start_node(self) -> Node:
        node = Node(self.config, exit_when_drained=False)
        self.nodes.append(node)
        return node

    def next(self, kind: str, timeout: float = 20.0) -> Any:
        node = self.config.stem
        return _next(self.watcher, f"edgeml/v1/{node}/{kind}", kind, timeout)


@contextmanager
def solo(
    broker: Broker, tmp_path: Path, node: str, seed: int, folders: list[Path]
) -> Iterator[Solo]:
    """Register ``folders`` at a new hub and start ``node`` on the first of them."""
    hub = Hub(broker, tmp_path / "hub", client_id=f"hub-{node}")
    config = node_config(
        tmp_path / f"{node}.toml",
        node=node,
        broker=broker,
        model_dir=folders[0],
        source=SIM.format(seed=seed),
        extra=FAST_RETRIES,
    )
    watcher = mqtt_client(broker, "hub", client_id=f"{node}-{secrets.token_hex(3)}")
    subscribe(watcher, f"edgeml/v1/{node}/+")
    setup = Solo(hub, config, watcher, [])
    try:
        hub.wait_ready()
        for folder in folders:
            done = hub.cli("register", str(folder))
            assert done.returncode == 0, done.stdout + done.stderr
        setup.start_node()
        # A command sent before the node's first connection would find no session to wait in.
        setup.next("result")
        yield setup
    finally:
        close(watcher)
        for started in setup.nodes:
            started.stop()
        hub.stop()


def test_a_node_killed_during_a_deploy_restarts_with_a_valid_model(
    broker: Broker, tmp_path: Path
) -> None:
    v1 = models.train(tmp_path / "v1", "1", slice(0, 3000))
    v2 = models.padded(v1, tmp_path / "v2", "2", 300_000)
    with solo(broker, tmp_path, "life-2", 2, [v1, v2]) as fleet:
        first_boot = fleet.next("result").boot
        deploy = fleet.hub.cli_async(
            "deploy", "--model", "pump-pca", "--version", "2", "--node", "life-2", "--timeout", "20"
        )
        assert fleet.next("ack").status == "accepted"
        fleet.nodes[0].kill()  # mid-deploy: chunks in flight, nothing switched yet
        deploy.wait(40)
        restarted = fleet.start_node()
        result = fleet.next("result")
        while result.boot == first_boot:  # what the killed boot left in its outbox
            result = fleet.next("result")
        assert result.model.version in {"1", "2"}
        assert np.isfinite(unpack_f32(result.scores)).all()
        assert restarted.alive(), restarted.output()


def test_retrain_captures_trains_registers_and_deploys(broker: Broker, tmp_path: Path) -> None:
    v1 = models.train(tmp_path / "v1", "1", slice(0, 3000))
    with solo(broker, tmp_path, "life-3", 3, [v1]) as fleet:
        done = fleet.hub.cli(
            "retrain",
            "--node",
            "life-3",
            "--readings",
            "500",
            "--deploy",
            "--timeout",
            "90",
            timeout=120,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        listed = fleet.hub.cli("models")
        assert "pump-pca" in listed.stdout and "retrain" in listed.stdout, listed.stdout
        _drain(fleet.watcher)
        assert fleet.next("result").model.version == "2"


def test_models_and_commands_list_what_happened(fleet: Fleet) -> None:
    code, out = fleet.cli("models")
    assert code == 0 and "pump-pca" in out
    code, out = fleet.cli("commands", "--node", "life-1")
    assert code == 0
    for word in ("deploy", "rollback", "applied", "failed", "rejected"):
        assert word in out, out


def test_rollbacks_walk_back_through_the_nodes_model_history(
    broker: Broker, tmp_path: Path
) -> None:
    v1 = models.train(tmp_path / "v1", "1", slice(0, 3000))
    later = [models.padded(v1, tmp_path / f"v{v}", v, 1000 * int(v)) for v in "23"]
    with solo(broker, tmp_path, "life-4", 4, [v1, *later]) as fleet:

        def run(*args: str) -> str:
            done = fleet.hub.cli(*args, "--node", "life-4", timeout=60)
            assert done.returncode == 0, done.stdout + done.stderr
            return done.stdout

        def scoring(expected: str) -> list[str]:
            """Versions of the next result batches until one is ``expected`` (at most two):
            the batch open at a switch goes out under the old model, possibly after the ack."""
            _drain(fleet.watcher)
            seen: list[str] = []
            while expected not in seen and len(seen) < 2:
                seen.append(fleet.next("result").model.version)
            return seen

        for version in "23":
            run("deploy", "--model", "pump-pca", "--version", version, "--settle", "1")
        assert scoring("3")[-1] == "3"
        assert "pump-pca@2" in run("rollback")
        assert scoring("2")[-1] == "2"
        assert "pump-pca@1" in run("rollback"), "further back, not a swap back to 3"
        assert scoring("1")[-1] == "1"
        refused = fleet.hub.cli("rollback", "--node", "life-4", timeout=60)
        assert refused.returncode == 1 and "no previous model" in refused.stdout
        assert "pump-pca@3" in run("rollback", "--to", "3")
        assert scoring("3")[-1] == "3"
