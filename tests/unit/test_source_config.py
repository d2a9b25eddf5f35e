"""Modbus and OPC UA source settings: a good map loads, every bad one names its key."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from asyncua import ua

from edge_node.config import SOURCE_KINDS, load_config, registers
from edge_node.sources.base import SourceError
from edge_node.sources.opcua import OpcNode, parse_node_ids, value_of
from edge_node.wiring import SOURCES
from schemas.settings import SettingsError

MODBUS = """
[node]
id = "pump-1"
[source]
kind = "modbus"
host = "10.0.0.5"
port = 5020
unit_id = 3
rate_hz = 2.0
[[source.registers]]
channel = "pressure"
address = 4
type = "float32"
word_order = "little"
unit = "bar"
[[source.registers]]
channel = "current"
address = 0
table = "input"
type = "int16"
scale = 0.01
offset = -1.5
"""

OPCUA = """
[node]
id = "pump-1"
[source]
kind = "opcua"
url = "opc.tcp://127.0.0.1:4840/"
[[source.nodes]]
channel = "pressure"
node_id = "ns=2;s=Pump.pressure"
scale = 0.1
"""

NO_REGISTERS = MODBUS.split("[[source.registers]]", maxsplit=1)[0]
NO_NODES = OPCUA.split("[[source.nodes]]", maxsplit=1)[0]


def test_a_modbus_map_loads_in_file_order_with_its_defaults(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, MODBUS), {"EDGE_NODE__SOURCE__HOST": "127.0.0.1"})
    source = config.source
    assert (source.host, source.port, source.unit_id, source.rate_hz) == ("127.0.0.1", 5020, 3, 2.0)
    regs = registers(source)
    assert [r.channel for r in regs] == ["pressure", "current"]
    assert (regs[0].table, regs[0].dtype, regs[0].word_order, regs[0].unit) == (
        "holding",
        "float32",
        "little",
        "bar",
    )
    assert (regs[1].table, regs[1].dtype, regs[1].scale, regs[1].offset) == (
        "input",
        "int16",
        0.01,
        -1.5,
    )


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (MODBUS.replace('"float32"', '"float64"'), r"key source\.registers\[0\]\.type"),
        (MODBUS.replace('"little"', '"middle"'), r"key source\.registers\[0\]\.word_order"),
        (MODBUS.replace('table = "input"', 'table = "coil"'), r"key source\.registers\[1\]\.table"),
        (
            MODBUS.replace('"current"', '"pressure"'),
            r"key source\.registers\[1\]\.channel: "
            r"'pressure' is already mapped by source\.registers\[0\]",
        ),
        (
            MODBUS.replace('"current"', '"Motor Current"'),
            r"registers\[1\]\.channel.*'motor_current'",
        ),
        (MODBUS.replace("address = 4", "address = -1"), r"key source\.registers\[0\]\.address"),
        (
            MODBUS.replace("address = 4", "address = 65535"),
            r"registers\[0\]\.address: float32 at "
            r"65535 needs registers up to 65536",
        ),
        (MODBUS.replace("scale = 0.01", "scale = 0"), r"key source\.registers\[1\]\.scale"),
        (MODBUS.replace("address = 4\n", ""), r"key source\.registers\[0\]\.address"),
        (
            MODBUS.split("[[source.registers]]", maxsplit=1)[0],
            r"key source\.registers: a modbus source maps",
        ),
        (MODBUS.replace("unit_id = 3", "unit_id = 300"), r"key source\.unit_id"),
        (
            MODBUS.replace('kind = "modbus"', 'kind = "modbud"'),
            r"key source\.kind: 'modbud' is "
            r"not one of csv, sim, modbus, opcua",
        ),
        (OPCUA.replace("opc.tcp://", "http://"), r"key source\.url: .*opc\.tcp://"),
        (
            OPCUA.split("[[source.nodes]]", maxsplit=1)[0],
            r"key source\.nodes: an opcua source maps no node",
        ),
        (OPCUA.replace("scale = 0.1", "scale = nan"), r"key source\.nodes\[0\]\.scale"),
        (OPCUA.replace("scale = 0.1", "offset = inf"), r"key source\.nodes\[0\]\.offset"),
        (OPCUA + 'unit = "bar"\nunits = "x"\n', r"key source\.nodes\[0\]\.units"),
    ],
)
def test_bad_source_settings_fail_at_start_up_naming_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    with pytest.raises(SettingsError, match=message):
        load_config(_write(tmp_path, text), {})


def test_every_configurable_kind_can_be_built() -> None:
    assert set(SOURCES) == set(SOURCE_KINDS)


def test_an_opcua_node_id_that_is_not_node_id_notation_names_its_key() -> None:
    nodes = [OpcNode("a", "ns=2;s=Pump.a"), OpcNode("b", "ns=two;x=1")]
    with pytest.raises(SourceError, match=r"key source\.nodes\[1\]\.node_id: 'ns=two;x=1'"):
        parse_node_ids(nodes)
    assert len(parse_node_ids(nodes[:1])) == 1


def _data(value: object, status: int = ua.StatusCodes.Good) -> ua.DataValue:
    return ua.DataValue(ua.Variant(value), StatusCode_=ua.StatusCode(status))


def test_opcua_values_are_scaled_when_good_and_numeric_else_a_dropout_with_a_reason() -> None:
    node = OpcNode("p", "ns=2;s=P", scale=0.001, offset=1.0)
    for raw, expected in ((2500.0, 3.5), (2500, 3.5), (True, 1.001)):
        value, reason, detail = value_of(node, _data(raw))
        assert value == pytest.approx(expected) and reason == detail == ""
    cases = [
        (_data(2500.0, ua.StatusCodes.BadSensorFailure), "bad_status", "BadSensorFailure"),
        (_data(2500.0, ua.StatusCodes.UncertainLastUsableValue), "bad_status", "Uncertain"),
        (_data("2500"), "not_numeric", "str"),
        (_data(None), "not_numeric", "NoneType"),
        (_data(math.inf), "nonfinite", "inf"),
    ]
    for data, reason, detail in cases:
        value, got_reason, got_detail = value_of(node, data)
        assert math.isnan(value) and got_reason == reason and detail in got_detail


def test_the_compose_modbus_pump_config_maps_the_simulated_devices_registers() -> None:
    """docker-compose.yml's pump-2 reads the modbus-pump service: its map must be the device's."""
    from tests.industrial import PUMP_REGISTERS

    path = Path(__file__).resolve().parents[2] / "deploy" / "compose" / "pump-2-modbus.toml"
    config = load_config(path, {"EDGE_NODE__NODE__ID": "pump-2"})
    assert config.source.kind == "modbus"
    assert (config.source.host, config.source.port) == ("modbus-pump", 5020)
    mapped = [
        (r.channel, r.address, r.table, r.type, r.word_order, r.scale, r.offset)
        for r in config.source.registers
    ]
    assert mapped == [
        (r.channel, r.address, r.table, r.dtype, r.word_order, r.scale, r.offset)
        for r in PUMP_REGISTERS
    ]
