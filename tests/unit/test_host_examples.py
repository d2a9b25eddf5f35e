"""The example host configs (deploy/host/*.toml) load through the real loaders, name every key
the processes know, and say what each key is for."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

import msgspec
import pytest

from cloud_hub.config import HubConfig, load_hub_config
from edge_node.config import NodeConfig, load_config

HOST = Path(__file__).resolve().parents[2] / "deploy" / "host"
# Sources gain keys with new kinds (Modbus, OPC UA): the example must not name unknown keys,
# but need not list every kind's own keys.
OPEN_SECTIONS = {"source"}


def _fields(struct: Any) -> dict[str, Any]:
    return {f.name: f.type for f in msgspec.structs.fields(struct)}


@pytest.mark.parametrize(
    ("name", "root"), [("hub.toml", HubConfig), ("node.toml", NodeConfig)], ids=["hub", "node"]
)
def test_example_names_every_key(name: str, root: type[msgspec.Struct]) -> None:
    example = tomllib.loads((HOST / name).read_text(encoding="utf-8"))
    sections = {f.name: f.default_factory for f in msgspec.structs.fields(root)}
    assert set(example) == set(sections)
    for section, table in example.items():
        struct = type(getattr(_instance(root, example), section))
        keys = set(_fields(struct))
        if section in OPEN_SECTIONS:
            assert set(table) <= keys, section
        else:
            assert set(table) == keys, (section, keys ^ set(table))


def _instance(root: type[msgspec.Struct], example: dict[str, Any]) -> Any:
    return msgspec.convert(example, type=root, strict=False)


@pytest.mark.parametrize("name", ["hub.toml", "node.toml"])
def test_every_key_has_a_comment(name: str) -> None:
    commented = False
    for number, line in enumerate((HOST / name).read_text(encoding="utf-8").splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("#"):
            commented = True
        elif not stripped or stripped.startswith("["):
            commented = False
        else:
            assert commented, f"{name}:{number}: {stripped!r} has no comment above it"


def test_hub_example_loads_with_absolute_state_paths() -> None:
    config = load_hub_config(HOST / "hub.toml", {})
    assert config.mqtt.password_file == "/etc/edgeml/hub.pw"
    assert config.store.ledger_path() == Path("/var/lib/edgeml/hub/ledger.db")
    assert config.store.models_path() == Path("/var/lib/edgeml/hub/models")


def test_node_example_loads_with_absolute_state_paths() -> None:
    config = load_config(HOST / "node.toml", {})
    assert config.node.id == "pump-7"
    assert config.data_dir == Path("/var/lib/edgeml/node")
    assert config.outbox_path.is_absolute() and config.store_dir.is_absolute()
