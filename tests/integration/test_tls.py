"""The broker's TLS listener (the commented block of mosquitto/mosquitto.conf) end to end.

A CA and server certificates are made by the test (tests/tls.py) with subjectAltName for the
host name and the IP address. The node, the hub and the CLI verify the broker's certificate
and host name; a certificate problem is one clear line in the client's own output, naming the
host and the reason, with an mqtts:// URL.
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker import Broker
from tests.integration import models
from tests.integration.conftest import HUB, NODES
from tests.integration.processes import Hub, Node, node_config, wait_for
from tests.tls import CertificateAuthority

pytestmark = pytest.mark.integration

NODE = "pump-3"


def _users() -> dict[str, str]:
    return {name: secrets.token_urlsafe(16) for name in (HUB, *NODES)}


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> CertificateAuthority:
    return CertificateAuthority(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def tls_broker(
    ca: CertificateAuthority, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Broker]:
    """The project's broker with its TLS listener, certificate for localhost and 127.0.0.1."""
    files = ca.server("server", names=["localhost"], ips=["127.0.0.1"])
    with Broker(tmp_path_factory.mktemp("mosquitto-tls"), _users(), tls=files) as broker:
        yield broker


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return models.train(tmp_path_factory.mktemp("model") / "v1", "1", slice(0, 3000))


def _env(prefix: str, host: str, ca: Path) -> dict[str, str]:
    return {f"{prefix}__MQTT__HOST": host, f"{prefix}__MQTT__TLS_CA": str(ca)}


def test_node_hub_and_cli_verify_the_broker_by_name_and_by_address(
    tls_broker: Broker, ca: CertificateAuthority, model: Path, tmp_path: Path
) -> None:
    config = node_config(
        tmp_path / f"{NODE}.toml",
        node=NODE,
        broker=tls_broker,
        model_dir=model,
        source='kind = "sim"\nrate_hz = 10\n',
    )
    # The node by host name (DNS SAN), the hub and its CLI by IP address (IP SAN).
    node = Node(config, exit_when_drained=False, env=_env("EDGE_NODE", "localhost", ca.path))
    hub = Hub(
        tls_broker,
        tmp_path / "hub",
        client_id="hub-tls",
        env=_env("CLOUD_HUB", "127.0.0.1", ca.path),
    )
    try:
        hub.wait_ready()
        wait_for(lambda: "connected; publishing birth" in node.output(), 20.0, "the node", node)
        ping = hub.cli("ping", "--node", NODE, "--timeout", "30")
        assert ping.returncode == 0, ping.stdout + ping.stderr + node.output()
        assert f"connecting to mqtts://localhost:{tls_broker.port}" in node.output()
        wait_for(lambda: "connected to the broker" in hub.output(), 20.0, "the hub", hub)
        assert f"connecting to mqtts://127.0.0.1:{tls_broker.port}" in hub.output()
    finally:
        node.stop()
        hub.stop()


@pytest.mark.parametrize(
    "case",
    [
        (["broker.example"], [], False, "127.0.0.1", "IP address mismatch"),
        (["broker.example"], ["127.0.0.1"], False, "localhost", "Hostname mismatch"),
        (
            ["localhost"],
            ["127.0.0.1"],
            True,
            "127.0.0.1",
            "self-signed certificate in certificate chain",
        ),
    ],
    ids=["address-mismatch", "name-mismatch", "unknown-ca"],
)
def test_a_certificate_problem_is_one_clear_line_naming_host_and_reason(
    ca: CertificateAuthority,
    model: Path,
    tmp_path: Path,
    case: tuple[list[str], list[str], bool, str, str],
) -> None:
    names, ips, other_ca, host, reason = case
    issuer = CertificateAuthority(tmp_path / "other-ca", "another CA") if other_ca else ca
    files = issuer.server("server", names=names, ips=ips)
    with Broker(tmp_path / "mosquitto", _users(), tls=files) as broker:
        config = node_config(
            tmp_path / f"{NODE}.toml",
            node=NODE,
            broker=broker,
            model_dir=model,
            source='kind = "sim"\nrate_hz = 10\n',
        )
        node = Node(config, exit_when_drained=False, env=_env("EDGE_NODE", host, ca.path))
        try:
            url = f"mqtts://{host}:{broker.port}"
            wait_for(lambda: "TLS verification failed" in node.output(), 20.0, "the TLS line", node)
            line = next(x for x in node.output().splitlines() if "TLS verification failed" in x)
            cli = _cli_ping(broker, host, ca.path, tmp_path)
        finally:
            node.stop()
    # The CLI gives up at once (a certificate does not heal) with the same words on stderr.
    assert cli.returncode != 0
    assert f"cannot connect to {url}: TLS verification failed for {host}" in cli.stderr
    assert reason.lower() in cli.stderr.lower(), cli.stderr
    assert f"not connected to {url}: TLS verification failed for {host}" in line
    assert reason.lower() in line.lower(), line


def _cli_ping(
    broker: Broker, host: str, ca: Path, tmp_path: Path
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUD_HUB")}
    env |= _env("CLOUD_HUB", host, ca) | {
        "CLOUD_HUB__MQTT__PORT": str(broker.port),
        "CLOUD_HUB__MQTT__PASSWORD": broker.users[HUB],
        "CLOUD_HUB__STORE__DB": str(tmp_path / "hub" / "hub.db"),
    }
    cloud_hub = str(Path(sys.executable).parent / "cloud-hub")
    return subprocess.run(
        [cloud_hub, "ping", "--node", NODE, "--timeout", "5"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
