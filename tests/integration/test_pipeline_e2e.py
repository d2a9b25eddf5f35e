"""End to end on a real broker: edge-node processes -> Mosquitto -> cloud-hub -> /metrics."""

from __future__ import annotations

import sqlite3
import time
from functools import partial
from pathlib import Path

import numpy as np
import pytest

from cloud_hub.models.onnx_export import save_model, train_model
from cloud_hub.models.trainer import TrainConfig
from edge_node.scoring.runtime import ModelRuntime
from edge_node.scoring.window import Windower
from schemas.alarm import apply
from schemas.codec import decode
from schemas.readings_csv import read_csv
from tests.broker import Broker
from tests.integration.processes import Hub, Node, node_config, wait_for
from tests.mqtt_clients import mqtt_client, publish
from tests.skab import skab_file

pytestmark = pytest.mark.integration


def _valve(index: int) -> Path:
    return skab_file(f"valve1/{index}.csv")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model trained on the healthy SKAB recording, saved as a node would receive it."""
    healthy = read_csv(skab_file("anomaly-free/anomaly-free.csv"))
    onnx, manifest = train_model(
        healthy.values[:3000],
        healthy.channels,
        name="pump-pca",
        version="1",
        trained_by="tests",
        config=TrainConfig(),
        now=time.time(),
    )
    folder = tmp_path_factory.mktemp("model")
    save_model(folder, onnx, manifest)
    return folder


def expected_counts(model_dir: Path, csv: Path) -> tuple[int, int]:
    """(readings, anomalous readings) that scoring ``csv`` with the model must give."""
    data = read_csv(csv)
    runtime = ModelRuntime.load(model_dir, sensors=data.channels)
    channels = runtime.manifest.input.channels
    values = data.values[:, [data.channels.index(c) for c in channels]]
    fill = np.array([runtime.manifest.reference.channels[c].mean for c in channels], np.float32)
    batch = Windower(runtime.manifest.input.window, fill).push(values)
    scores, _ = runtime.score(batch.windows)
    # As the node: windows still padded at start cannot alarm; the model's rule gives flags.
    exceed = batch.complete & (scores > runtime.manifest.threshold)
    return len(values), int(apply(runtime.manifest.alarm, exceed).sum())


def csv_source(csv: Path, speed: float) -> str:
    return f'kind = "csv"\npaths = ["{csv}"]\nspeed = {speed}\n'


def test_hub_counts_exactly_what_three_nodes_send(
    broker: Broker, model_dir: Path, tmp_path: Path
) -> None:
    hub = Hub(broker, tmp_path / "hub", client_id="hub-exact")
    nodes: list[Node] = []
    try:
        hub.wait_ready()
        names = ["pump-1", "pump-2", "pump-3"]
        for name, csv in zip(names, map(_valve, range(3)), strict=True):
            config = node_config(
                tmp_path / f"{name}.toml",
                node=name,
                broker=broker,
                model_dir=model_dir,
                source=csv_source(csv, 0),
            )
            nodes.append(Node(config))
        for node in nodes:
            assert node.wait(60) == 0, node.output()
        for name, csv in zip(names, map(_valve, range(3)), strict=True):
            readings, anomalous = expected_counts(model_dir, csv)
            wait_for(partial(_at_least, hub, name, readings), 20, f"{name} readings", hub)
            assert hub.value("edgeml_readings_total", node=name) == readings
            assert hub.value("edgeml_anomalous_readings_total", node=name) == anomalous
            assert hub.value("edgeml_seq_gaps", node=name) == 0
            assert hub.value("edgeml_missing_readings", node=name) == 0
        assert anomalous > 0, "valve1 files hold a labelled anomaly; the model must flag some"
        assert hub.value("edgeml_messages_total", kind="telemetry") >= 3
        assert hub.value("edgeml_messages_total", kind="drift") >= 3
    finally:
        for node in nodes:
            node.stop()
        assert hub.stop() == 0, hub.output()


def test_broker_restart_mid_stream_loses_and_doubles_nothing(
    fresh_broker: Broker, model_dir: Path, tmp_path: Path
) -> None:
    hub = Hub(fresh_broker, tmp_path / "hub", client_id="hub-restart")
    node: Node | None = None
    try:
        hub.wait_ready()
        readings, anomalous = expected_counts(model_dir, _valve(0))
        config = node_config(
            tmp_path / "pump-1.toml",
            node="pump-1",
            broker=fresh_broker,
            model_dir=model_dir,
            source=csv_source(_valve(0), 150),
        )
        node = Node(config)
        wait_for(
            lambda: hub.value("edgeml_readings_total", node="pump-1") > 100,
            20,
            "first results",
            hub,
            node,
        )
        fresh_broker.stop()
        time.sleep(2.0)  # the node keeps scoring into its outbox meanwhile
        assert node.alive(), node.output()
        fresh_broker.start()
        assert node.wait(60) == 0, node.output()
        wait_for(
            lambda: hub.value("edgeml_readings_total", node="pump-1") >= readings,
            30,
            "all readings after the restart",
            hub,
            node,
        )
        time.sleep(1.0)  # anything counted twice would show up now
        assert hub.value("edgeml_readings_total", node="pump-1") == readings
        assert hub.value("edgeml_anomalous_readings_total", node="pump-1") == anomalous
        assert hub.value("edgeml_seq_gaps", node="pump-1") == 0
        assert hub.value("edgeml_missing_readings", node="pump-1") == 0
    finally:
        if node is not None:
            node.stop()
        hub.stop()


def _outbox_readings(db: Path) -> int:
    """Readings inside the result messages waiting in a node's outbox (0 while the node is
    still creating the file: it exists before its table does)."""
    with sqlite3.connect(db) as conn:
        made = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'outbox'").fetchone()
        if made is None:
            return 0
        rows = conn.execute("SELECT payload FROM outbox WHERE kind = 'result'").fetchall()
    return sum(decode("result", bytes(payload)).n for (payload,) in rows)


def test_node_killed_mid_stream_loses_nothing_it_accepted(
    fresh_broker: Broker, model_dir: Path, tmp_path: Path
) -> None:
    """The node scores into its outbox while the broker is away, is killed, and restarts."""
    config = node_config(
        tmp_path / "pump-2.toml",
        node="pump-2",
        broker=fresh_broker,
        model_dir=model_dir,
        source=csv_source(_valve(1), 200),
    )
    outbox = tmp_path / "pump-2-data" / "outbox.db"
    fresh_broker.stop()
    first = Node(config)
    wait_for(
        lambda: outbox.exists() and _outbox_readings(outbox) >= 300,
        30,
        "results in the outbox",
        first,
    )
    first.kill()
    accepted = _outbox_readings(outbox)
    fresh_broker.start()
    hub = Hub(fresh_broker, tmp_path / "hub", client_id="hub-node-restart")
    second: Node | None = None
    try:
        hub.wait_ready()
        second = Node(config)
        assert second.wait(60) == 0, second.output()
        readings, _ = expected_counts(model_dir, _valve(1))
        wait_for(
            lambda: hub.value("edgeml_readings_total", node="pump-2") >= accepted + readings,
            30,
            "both boots' readings",
            hub,
            second,
        )
        time.sleep(1.0)
        assert hub.value("edgeml_readings_total", node="pump-2") == accepted + readings
        assert hub.value("edgeml_seq_gaps", node="pump-2") == 0
        assert hub.value("edgeml_missing_readings", node="pump-2") == 0
    finally:
        if second is not None:
            second.stop()
        hub.stop()


def test_malformed_payloads_are_counted_and_the_hub_goes_on(
    broker: Broker, model_dir: Path, tmp_path: Path
) -> None:
    hub = Hub(broker, tmp_path / "hub", client_id="hub-malformed")
    try:
        hub.wait_ready()
        client = mqtt_client(broker, "node-c")
        try:
            publish(client, "edgeml/v1/node-c/result", b"\xc1 not msgpack")
            publish(client, "edgeml/v1/node-c/telemetry", b"\x81\xa1v\x01")
            publish(client, "edgeml/v1/node-c/event", bytes(range(256)))
        finally:
            client.disconnect()
            client.loop_stop()
        wait_for(lambda: _rejects(hub) >= 3, 15, "three rejects", hub)
        assert hub.value("edgeml_rejected_messages_total", reason="malformed", type="result") == 1
        assert hub.value("edgeml_rejected_messages_total", reason="invalid", type="telemetry") == 1
        assert hub.alive(), hub.output()
        config = node_config(
            tmp_path / "node-c.toml",
            node="node-c",
            broker=broker,
            model_dir=model_dir,
            source=csv_source(_valve(2), 0),
        )
        node = Node(config)
        assert node.wait(60) == 0, node.output()
        readings, _ = expected_counts(model_dir, _valve(2))
        wait_for(
            lambda: hub.value("edgeml_readings_total", node="node-c") >= readings,
            20,
            "valid results after the garbage",
            hub,
        )
        assert hub.value("edgeml_readings_total", node="node-c") == readings
        assert "Traceback" not in hub.output(400)
    finally:
        assert hub.stop() == 0, hub.output()


def _at_least(hub: Hub, node: str, readings: int) -> bool:
    return hub.value("edgeml_readings_total", node=node) >= readings


def _rejects(hub: Hub) -> float:
    return sum(
        v for (name, _), v in hub.samples().items() if name == "edgeml_rejected_messages_total"
    )
