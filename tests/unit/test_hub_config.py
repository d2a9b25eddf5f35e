"""cloud-hub settings: defaults, file, environment overrides and errors naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from cloud_hub.cli.main import main
from cloud_hub.config import HubConfig, MqttConfig, load_hub_config, resolve_password
from schemas.settings import SettingsError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "hub.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults() -> None:
    config = load_hub_config(None, {})
    assert config == HubConfig()
    assert (config.mqtt.host, config.mqtt.port, config.mqtt.username) == ("127.0.0.1", 1883, "hub")
    assert config.mqtt.session_expiry_s == 86400
    assert config.store.db == "var/hub/hub.db"
    assert (config.metrics.host, config.metrics.port, config.metrics.per_node) == (
        "127.0.0.1",
        9100,
        True,
    )
    assert config.ingest.offline_after_s > 0


def test_file_then_environment_overrides(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[mqtt]\nport = 8883\nclient_id = "hub-a"\n[metrics]\nper_node = true\n'
        "[ingest]\noffline_after_s = 30\n",
    )
    env = {
        "CLOUD_HUB__MQTT__PORT": "1884",
        "CLOUD_HUB__METRICS__PER_NODE": "false",
        "CLOUD_HUB__STORE__DB": "/tmp/x.db",
        "OTHER__MQTT__PORT": "1",
    }
    config = load_hub_config(path, env)
    assert config.mqtt.port == 1884
    assert config.mqtt.client_id == "hub-a"
    assert config.metrics.per_node is False
    assert config.store.db == "/tmp/x.db"
    assert config.ingest.offline_after_s == 30.0


def test_unknown_key_names_key_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[mqtt]\nprot = 1883\n")
    with pytest.raises(SettingsError) as err:
        load_hub_config(path, {})
    assert "mqtt.prot" in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[mqtt]\nport = 0\n", "mqtt.port"),
        ("[mqtt]\nport = 70000\n", "mqtt.port"),
        ('[mqtt]\nhost = ""\n', "mqtt.host"),
        ("[mqtt]\nkeepalive_s = 1\n", "mqtt.keepalive_s"),
        ("[mqtt]\nsession_expiry_s = 0\n", "mqtt.session_expiry_s"),
        ("[metrics]\nport = -1\n", "metrics.port"),
        ('[metrics]\nper_node = "maybe"\n', "metrics.per_node"),
        ("[ingest]\noffline_after_s = 0\n", "ingest.offline_after_s"),
        ('[mqtt]\ntls_cert = "c.pem"\n', "mqtt.tls_key"),
        ('[mqtt]\ntls_key = "k.pem"\n', "mqtt.tls_cert"),
    ],
)
def test_bad_values_name_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(SettingsError, match=f"key {key}\\b"):
        load_hub_config(path, {})


def test_bad_environment_value_names_the_variable() -> None:
    with pytest.raises(SettingsError, match="CLOUD_HUB__MQTT__PORT"):
        load_hub_config(None, {"CLOUD_HUB__MQTT__PORT": "not-a-port"})


def test_metrics_port_zero_means_any_free_port() -> None:
    assert load_hub_config(None, {"CLOUD_HUB__METRICS__PORT": "0"}).metrics.port == 0


def test_password_file_is_read_and_stripped(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("  s3cret\n", encoding="utf-8")
    assert resolve_password(MqttConfig(password="inline", password_file=str(secret))) == "s3cret"
    assert resolve_password(MqttConfig(password="inline")) == "inline"


def test_missing_password_file_names_the_key(tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match=r"mqtt\.password_file.*nope"):
        resolve_password(MqttConfig(password_file=str(tmp_path / "nope")))


def test_serve_with_bad_config_exits_2_with_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "[metrics]\nport = 99999\n")
    assert main(["serve", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "metrics.port" in err and str(path) in err


def test_serve_with_missing_config_file_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--config", str(tmp_path / "absent.toml")]) == 2
    assert "absent.toml" in capsys.readouterr().err


def test_store_files_default_to_the_folder_of_the_registry() -> None:
    store = load_hub_config(None, {"CLOUD_HUB__STORE__DB": "/data/hub/hub.db"}).store
    assert store.ledger_path() == Path("/data/hub/ledger.db")
    assert store.models_path() == Path("/data/hub/models")
    assert store.captures_path() == Path("/data/hub/captures")


def test_store_files_can_be_placed_elsewhere(tmp_path: Path) -> None:
    path = write(
        tmp_path, '[store]\nledger_db = "/l/ledger.db"\nmodels_dir = "/m"\ncaptures_dir = "/c"\n'
    )
    store = load_hub_config(path, {}).store
    assert (store.ledger_path(), store.models_path(), store.captures_path()) == (
        Path("/l/ledger.db"),
        Path("/m"),
        Path("/c"),
    )
