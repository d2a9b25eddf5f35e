"""Node settings: defaults, environment overrides, errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_node.config import load_config, read_password
from edge_node.sources.simulator import PumpSimulator
from edge_node.wiring import _capabilities
from schemas.settings import SettingsError


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "node.toml"
    path.write_text(text)
    return path


def test_minimal_file_gets_defaults(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, '[node]\nid = "pump-1"\n'), {})
    assert config.mqtt.username == "" and config.mqtt.port == 1883
    assert config.outbox_path == Path("var/edge/pump-1/outbox.db")
    assert config.store_dir == Path("var/edge/pump-1/models")


def test_environment_overrides_file_with_type_conversion(tmp_path: Path) -> None:
    path = _write(tmp_path, '[node]\nid = "pump-1"\n[mqtt]\nport = 1883\n')
    env = {
        "EDGE_NODE__MQTT__PORT": "18830",
        "EDGE_NODE__NODE__ID": "pump-9",
        "EDGE_NODE__SOURCE__LOOP": "true",
        "OTHER": "x",
    }
    config = load_config(path, env)
    assert (config.mqtt.port, config.node.id, config.source.loop) == (18830, "pump-9", True)


@pytest.mark.parametrize(
    ("text", "env", "message"),
    [
        ('[node]\nid = "p"\n[mqtt]\nport = 70000\n', {}, "key mqtt.port"),
        ('[node]\nid = "p"\n[mqtt]\nprot = 1\n', {}, "key mqtt.prot"),
        ("[mqtt]\nport = 1\n", {}, "key node"),
        ('[node]\nid = "a/b"\n', {}, "key node.id"),
        ('[node]\nid = "p"\n[source]\nkind = "csv"\n', {}, "key source.paths"),
        (
            '[node]\nid = "p"\n',
            {"EDGE_NODE__BATCH__MAX_AGE_S": "soon"},
            "EDGE_NODE__BATCH__MAX_AGE_S",
        ),
        ('[node]\nid = "p"\n[source]\nkind = "profibus"\n', {}, "key source.kind"),
        ("[node\n", {}, "not valid TOML"),
    ],
)
def test_bad_settings_name_the_key_and_source(
    tmp_path: Path, text: str, env: dict[str, str], message: str
) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(SettingsError, match=message) as info:
        load_config(path, env)
    assert str(path) in str(info.value) or "env " in str(info.value)


def test_list_override_is_a_toml_array(tmp_path: Path) -> None:
    path = _write(tmp_path, '[node]\nid = "p"\n')
    env = {"EDGE_NODE__SOURCE__FAULTS": '["drift:pressure:60:120:4", "spike:current:5:1"]'}
    assert load_config(path, env).source.faults == ["drift:pressure:60:120:4", "spike:current:5:1"]
    with pytest.raises(SettingsError, match="env EDGE_NODE__SOURCE__FAULTS"):
        load_config(path, {"EDGE_NODE__SOURCE__FAULTS": '["unclosed'})


def test_missing_file_is_named(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"nope\.toml"):
        load_config(tmp_path / "nope.toml", {})


def test_password_file_is_read_and_stripped(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret\n")
    config = load_config(
        _write(tmp_path, f'[node]\nid = "p"\n[mqtt]\npassword_file = "{secret}"\n'), {}
    )
    assert read_password(config) == "s3cret"


def test_command_settings_have_defaults_and_overrides(tmp_path: Path) -> None:
    path = _write(tmp_path, '[node]\nid = "p"\ndata_dir = "d"\n[commands]\nchunk_retries = 2\n')
    config = load_config(path, {"EDGE_NODE__COMMANDS__CHUNK_TIMEOUT_S": "1.5"})
    c = config.commands
    assert (c.chunk_timeout_s, c.chunk_retries, c.capture_buffer) == (1.5, 2, 20_000)
    assert (c.probation_runs, c.latency_factor) == (20, 20.0)
    assert config.mqtt.session_expiry_s == 3600
    # A relative path in a file is relative to the file, not to the current folder.
    assert config.commands_path == tmp_path / "d" / "commands.json"
    with pytest.raises(SettingsError, match=r"commands\.probation_runs"):
        load_config(_write(tmp_path, '[node]\nid = "p"\n[commands]\nprobation_runs = 0\n'), {})


def test_hub_keys_file_adds_its_keys_and_names_a_bad_line(tmp_path: Path) -> None:
    from cloud_hub.commands import keys

    for name in ("a.key", "b.key"):
        keys.generate(tmp_path / name)
    first = keys.public_path(tmp_path / "a.key").read_text().strip()
    second = keys.public_path(tmp_path / "b.key").read_text().strip()
    (tmp_path / "hub.pub").write_text(f"# the hub's key\n{second}\n\n")
    text = f'[node]\nid = "pump-1"\n[security]\nhub_keys = ["{first}"]\nhub_keys_file = "hub.pub"\n'
    config = load_config(_write(tmp_path, text), {})
    assert config.security.hub_keys == [first, second]

    (tmp_path / "hub.pub").write_text(f"{second}\nnot-a-key\n")
    with pytest.raises(SettingsError, match=r"hub_keys_file .*hub\.pub line 2"):
        load_config(_write(tmp_path, text), {})
    (tmp_path / "hub.pub").write_text("# nothing yet\n")
    with pytest.raises(SettingsError, match="lists no key"):
        load_config(_write(tmp_path, text), {})
    env = {"EDGE_NODE__SECURITY__HUB_KEYS_FILE": str(tmp_path / "missing.pub")}
    with pytest.raises(SettingsError, match="cannot read"):
        load_config(_write(tmp_path, text), env)


def test_the_node_announces_its_group_in_its_capabilities(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, '[node]\nid = "pump-1"\ngroup = "plant-2/line-4"\n'), {})
    assert config.node.group == "plant-2/line-4"
    source = PumpSimulator(seed=1, wall_start=0.0)
    assert _capabilities(source, config.node).group == "plant-2/line-4"
    with pytest.raises(SettingsError, match=r"node\.group"):
        load_config(_write(tmp_path, f'[node]\nid = "p"\ngroup = "{"g" * 65}"\n'), {})
