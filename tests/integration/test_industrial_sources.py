"""Modbus TCP and OPC UA sources against the libraries' own servers, on loopback, fed with
simulated pump values: decoded values, dropouts by reason, a device restart, and a real node
whose readings reach a real hub scored."""

from __future__ import annotations

import math
import queue
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import paho.mqtt.client as mqtt
import pytest
from asyncua import ua

from cloud_hub.models.onnx_export import save_model, train_model
from cloud_hub.models.trainer import TrainConfig
from edge_node.config import load_config
from edge_node.sources.base import Block
from edge_node.sources.modbus import ModbusReader
from edge_node.sources.opcua import OpcNode
from edge_node.sources.polling import Backoff, PolledSource, Reader
from edge_node.sources.registers import Register
from edge_node.sources.simulator import CHANNELS, PumpSimulator
from edge_node.wiring import SOURCES
from schemas.codec import decode
from schemas.messages import Telemetry
from schemas.packing import unpack_f32
from tests.broker import Broker
from tests.industrial import PUMP_NODES, PUMP_REGISTERS, SIZE, Feeder, ModbusPump, OpcUaPump
from tests.integration.processes import Hub, Node, node_config, wait_for
from tests.mqtt_clients import close, mqtt_client, state, subscribe

pytestmark = pytest.mark.integration

RATE_HZ = 20.0
# Generous: the servers share this process and a loaded CI machine; a stopped server is noticed
# at once anyway (the connection closes), so the timeout never slows these tests down.
TIMEOUT_S = 2.0
WINDOW = 8


class Collector:
    """Polls a source like the node's loop does and keeps every block, for checks on the stream."""

    def __init__(self, source: PolledSource) -> None:
        self.source = source
        self.blocks: list[Block] = []

    def drain(self) -> None:
        while (block := self.source.poll(time.monotonic())) is not None:
            self.blocks.append(block)

    def until(self, check: Callable[[np.ndarray], bool], timeout: float, what: str) -> None:
        """Poll until the newest reading satisfies ``check``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.drain()
            if self.blocks and check(self.blocks[-1].values[-1]):
                return
            time.sleep(0.02)
        raise AssertionError(
            f"timed out after {timeout} s waiting for {what}: {self.source.stats()}"
        )

    def values(self) -> np.ndarray:
        return np.concatenate([b.values for b in self.blocks])

    def assert_uniform(self) -> None:
        """Every reading is there once, at its place in time: no gap, no overlap."""
        period = self.source.period
        for before, after in zip(self.blocks, self.blocks[1:], strict=False):
            assert after.t0 == pytest.approx(before.t0 + before.n * period, abs=1e-6)


def _source(reader: Reader) -> PolledSource:
    return PolledSource(
        reader,
        rate_hz=RATE_HZ,
        backoff=Backoff(0.1, 0.5),
        wall_start=0.0,
        max_block=256,
    )


@pytest.fixture
def modbus_pump() -> Iterator[ModbusPump]:
    pump = ModbusPump()
    pump.start()
    try:
        yield pump
    finally:
        pump.close()


def _healthy() -> dict[str, float]:
    row = PumpSimulator(seed=3, rate_hz=1.0, wall_start=0.0).read(1).values[0]
    return {c: float(v) for c, v in zip(CHANNELS, row, strict=True)}


def test_modbus_values_arrive_scaled_and_a_refused_register_is_a_counted_dropout(
    modbus_pump: ModbusPump,
) -> None:
    values = _healthy()
    modbus_pump.set(values)
    # One more channel at an address the device does not have: exception response 2.
    registers = [*PUMP_REGISTERS, Register("spare", SIZE + 10, "holding", "uint16")]
    reader = ModbusReader("127.0.0.1", modbus_pump.port, 1, registers, timeout=TIMEOUT_S)
    source = _source(reader)
    source.start(time.monotonic(), time.time())
    collector = Collector(source)
    try:
        collector.until(lambda row: not math.isnan(row[0]), 10, "a first good reading")
        time.sleep(0.3)
        collector.drain()
    finally:
        source.close()
    collector.drain()  # what the thread took before it stopped
    got = collector.values()
    assert got.shape[1] == len(CHANNELS) + 1
    # Rows the reader took (a loaded machine can make it miss its time: "late", all NaN).
    taken = ~np.isnan(got[:, :-1]).all(axis=1)
    last = got[taken][-1]
    for i, reg in enumerate(PUMP_REGISTERS):
        # integer registers round to their scale step; float32 on the wire and in the block
        step = reg.scale / 2 if reg.dtype != "float32" else 0.0
        assert last[i] == pytest.approx(values[reg.channel], abs=step + 1e-5, rel=1e-6)
    assert not np.isnan(got[taken, :-1]).any()
    assert np.isnan(got[:, -1]).all()
    stats = source.stats()
    assert stats.connected and stats.reconnects == 0
    assert stats.readings == len(got)
    late = int((~taken).sum())
    assert stats.dropouts == {"exception": int(taken.sum())} | (
        {"late": late * got.shape[1]} if late else {}
    )
    collector.assert_uniform()


def test_modbus_device_restart_gives_counted_dropouts_then_values_again(
    modbus_pump: ModbusPump,
) -> None:
    modbus_pump.set(_healthy())
    reader = ModbusReader("127.0.0.1", modbus_pump.port, 1, PUMP_REGISTERS, timeout=TIMEOUT_S)
    source = _source(reader)
    source.start(time.monotonic(), time.time())
    collector = Collector(source)
    try:
        collector.until(lambda row: not np.isnan(row).any(), 10, "good readings")
        modbus_pump.stop()
        collector.until(lambda row: bool(np.isnan(row).all()), 10, "dropouts while it is down")
        time.sleep(0.5)
        collector.drain()
        assert not source.stats().connected
        modbus_pump.start()  # same port, same values
        collector.until(lambda row: not np.isnan(row).any(), 10, "good readings after restart")
    finally:
        source.close()
    collector.drain()  # what the thread took before it stopped
    stats = source.stats()
    got = collector.values()
    lost = int(np.isnan(got).all(axis=1).sum())
    assert lost >= 0.5 * RATE_HZ  # down for at least half a second
    assert stats.reconnects == 1
    assert stats.readings == len(got)
    assert set(stats.dropouts) <= {"disconnected", "late"}
    assert sum(stats.dropouts.values()) == lost * len(CHANNELS)
    collector.assert_uniform()


def test_opcua_bad_status_is_a_dropout_and_a_server_restart_is_survived(tmp_path: Path) -> None:
    pump = OpcUaPump()
    pump.start()
    values = _healthy()
    pump.set(values)
    # Built from the node's settings, as edge-node run builds it.
    nodes = [*PUMP_NODES, OpcNode("scaled", "ns=2;s=Pump.current", scale=1000.0, offset=-5.0)]
    table = "".join(
        f'[[source.nodes]]\nchannel = "{n.channel}"\nnode_id = "{n.node_id}"\n'
        f"scale = {n.scale}\noffset = {n.offset}\n"
        for n in nodes
    )
    settings = tmp_path / "node.toml"
    settings.write_text(
        f'[node]\nid = "n"\n[source]\nkind = "opcua"\nurl = "{pump.url}"\nrate_hz = {RATE_HZ}\n'
        f"timeout_s = {TIMEOUT_S}\nreconnect_min_s = 0.1\nreconnect_max_s = 0.5\n{table}"
    )
    section = load_config(settings, {}).source
    source = SOURCES[section.kind](section, time.time())
    assert isinstance(source, PolledSource)
    source.start(time.monotonic(), time.time())
    collector = Collector(source)
    try:
        collector.until(lambda row: not np.isnan(row).any(), 15, "good readings")
        last = collector.blocks[-1].values[-1]
        for i, channel in enumerate(CHANNELS):
            assert last[i] == pytest.approx(values[channel], rel=1e-6), channel
        assert last[-1] == pytest.approx(values["current"] * 1000.0 - 5.0, rel=1e-6)
        pressure = CHANNELS.index("pressure")
        pump.set_status("pressure", ua.StatusCodes.BadSensorFailure)
        collector.until(
            lambda row: bool(
                np.isnan(row[pressure]) and not np.isnan(np.delete(row, pressure)).any()
            ),
            5,
            "pressure alone as a dropout",
        )
        dropouts = source.stats().dropouts
        assert dropouts["bad_status"] >= 1 and set(dropouts) <= {"bad_status", "late"}
        pump.stop()
        collector.until(lambda row: bool(np.isnan(row).all()), 10, "dropouts while it is down")
        pump.start()
        pump.set(values)  # the sensor is mended: Good again
        collector.until(lambda row: not np.isnan(row).any(), 20, "good readings after restart")
    finally:
        source.close()
        pump.close()
    collector.drain()  # what the thread took before it stopped
    stats = source.stats()
    assert stats.reconnects == 1 and stats.connected
    assert stats.dropouts["disconnected"] > 0
    assert stats.readings == len(collector.values())
    collector.assert_uniform()


def _pump_model(folder: Path, seed: int) -> Path:
    """A model trained on the simulated pump's healthy readings (no data files needed): the
    stream the feeder with ``seed`` replays, so that healthy readings stay under the threshold
    (the test is about the way in and out, not about how well a model generalises)."""
    healthy = PumpSimulator(seed=seed, rate_hz=RATE_HZ, wall_start=0.0).read(3000).values
    onnx, manifest = train_model(
        healthy,
        list(CHANNELS),
        name="pump-sim",
        version="1",
        trained_by="tests",
        config=TrainConfig(window=WINDOW),
        now=time.time(),
    )
    save_model(folder, onnx, manifest)
    return folder


def _modbus_section(port: int) -> str:
    lines = [f'kind = "modbus"\nport = {port}\nrate_hz = {RATE_HZ}\ntimeout_s = {TIMEOUT_S}\n']
    for reg in PUMP_REGISTERS:
        lines.append(
            f'[[source.registers]]\nchannel = "{reg.channel}"\naddress = {reg.address}\n'
            f'table = "{reg.table}"\ntype = "{reg.dtype}"\nword_order = "{reg.word_order}"\n'
            f"scale = {reg.scale}\noffset = {reg.offset}\n"
        )
    return "".join(lines)


def test_a_node_reading_modbus_delivers_scored_readings_to_the_hub(
    fresh_broker: Broker, modbus_pump: ModbusPump, tmp_path: Path
) -> None:
    model = _pump_model(tmp_path / "model", seed=5)
    feeder = Feeder(modbus_pump, RATE_HZ, seed=5).start()
    config = node_config(
        tmp_path / "node-a.toml",
        node="node-a",
        broker=fresh_broker,
        model_dir=model,
        source=_modbus_section(modbus_pump.port),
    )
    hub = Hub(fresh_broker, tmp_path / "hub", client_id="hub-modbus")
    watcher = mqtt_client(fresh_broker, "hub")
    node: Node | None = None
    try:
        subscribe(watcher, "edgeml/v1/node-a/+")
        hub.wait_ready()
        node = Node(config, exit_when_drained=False)
        wait_for(
            lambda: hub.value("edgeml_readings_total", node="node-a") >= 2 * RATE_HZ,
            30,
            "two seconds of readings at the hub",
            hub,
            node,
        )
        healthy = hub.value("edgeml_readings_total", node="node-a")
        flagged = hub.value("edgeml_anomalous_readings_total", node="node-a")
        # Healthy readings pass, but for the first window (padded with the reference means).
        assert flagged <= WINDOW + 0.05 * healthy
        feeder.stop()
        modbus_pump.set({"current": 30.0, "voltage": 120.0})  # a stalled motor
        wait_for(
            lambda: (
                hub.value("edgeml_anomalous_readings_total", node="node-a") >= flagged + RATE_HZ
            ),
            15,
            "a second of the stall flagged at the hub",
            hub,
            node,
        )
        messages = _drain(watcher)
    finally:
        feeder.stop()
        close(watcher)
        if node is not None:
            assert node.stop() == 0, node.output()
        hub.stop()
    results = [decode("result", bytes(m.payload)) for m in messages if m.topic.endswith("/result")]
    scores = np.concatenate([unpack_f32(r.scores) for r in results])
    assert len(scores) > 0 and np.isfinite(scores).all()
    telemetry = [
        decode("telemetry", bytes(m.payload)) for m in messages if m.topic.endswith("/telemetry")
    ]
    assert telemetry, "telemetry every second"
    health = _last(telemetry).source
    assert health is not None and health.connected and health.readings > 0


def _last(items: list[Telemetry]) -> Telemetry:
    return items[-1]


def _drain(client: mqtt.Client) -> list[mqtt.MQTTMessage]:
    """Every message the client has received so far."""
    messages = state(client).messages
    got = []
    while True:
        try:
            got.append(messages.get_nowait())
        except queue.Empty:
            return got
