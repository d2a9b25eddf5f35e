"""A node says why it is not connected: refused, or TLS verification failed naming the host and
the CA; and mosquitto/README.md's certificate recipe works for a broker reached by IP address."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import textwrap
import time
from pathlib import Path

import pytest

from tests.broker import REPO_ROOT, find_mosquitto, free_port
from tests.integration.models import sim_model
from tests.integration.processes import Node, Proc, wait_for

pytestmark = pytest.mark.integration

TLS_README = REPO_ROOT / "mosquitto" / "README.md"


def _node(folder: Path, port: int, tls_ca: str = "") -> Node:
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "node.toml"
    config.write_text(
        f'[node]\nid = "tls-1"\ndata_dir = "{folder / "data"}"\n'
        f'[mqtt]\nport = {port}\npassword = "x"\ntls_ca = "{tls_ca}"\n'
        "reconnect_min_s = 1\nreconnect_max_s = 2\n"
        f'[model]\ninitial = "{sim_model(folder / "model")}"\n'
        '[source]\nkind = "sim"\nrate_hz = 5\n'
    )
    return Node(config, exit_when_drained=False)


def test_refused_connection_is_a_warning_naming_the_address(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    node = _node(tmp_path, port)
    try:
        expected = f"WARNING .*not connected to mqtt://127.0.0.1:{port}: connection refused by"
        wait_for(lambda: re.search(expected, node.output()) is not None, 20, "a warning", node)
        time.sleep(5)  # a few more attempts (every 1-2 s) ...
    finally:
        node.stop()
    # ... but one warning a minute.
    assert len(re.findall("not connected to", node.log_path.read_text())) == 1


def _recipe(folder: Path, address: str) -> Path:
    """Run the README's certificate recipe naming the broker by ``address``; the certs folder."""
    text = TLS_README.read_text(encoding="utf-8")
    recipe = re.search(r"```sh\n( *mkdir -p mosquitto/certs.*?)```", text, re.S)
    assert recipe is not None, f"{TLS_README}: no certificate recipe"
    script = textwrap.dedent(recipe.group(1)).replace("192.0.2.10", address)
    folder.mkdir(parents=True)
    done = subprocess.run(
        ["bash", "-e", "-c", script], cwd=folder, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
    return folder / "mosquitto" / "certs"


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
    except OSError:
        return False
    return True


def _tls_broker(folder: Path, certs: Path) -> tuple[Proc, int]:
    port = free_port()
    conf = folder / "tls.conf"
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\n"
        + ("user root\n" if os.geteuid() == 0 else "")
        + f"cafile {certs / 'ca.crt'}\ncertfile {certs / 'server.crt'}\n"
        f"keyfile {certs / 'server.key'}\nlog_dest stdout\n"
    )
    broker = Proc([find_mosquitto() or "mosquitto", "-c", str(conf)], {}, folder / "broker.log")
    wait_for(lambda: _listening(port), 10, "TLS broker", broker)
    return broker, port


@pytest.mark.parametrize(
    ("address", "connects"), [("127.0.0.1", True), ("192.0.2.10", False)], ids=["ip", "other-ip"]
)
def test_tls_by_ip_address(tmp_path: Path, address: str, connects: bool) -> None:
    # "other-ip": the certificate names another address than the one the node connects to.
    certs = _recipe(tmp_path / "recipe", address)
    broker, port = _tls_broker(tmp_path, certs)
    node = _node(tmp_path / "node", port, tls_ca=str(certs / "ca.crt"))
    try:
        url = f"mqtts://127.0.0.1:{port}"
        if connects:
            wait_for(lambda: "publishing birth" in node.output(), 20, "connected", node, broker)
            assert f"connecting to {url}" in node.output()
        else:
            expected = (
                f"WARNING .*not connected to {re.escape(url)}: TLS verification failed for "
                f"127.0.0.1 \\(CA {re.escape(str(certs / 'ca.crt'))}\\): IP address mismatch"
            )
            wait_for(lambda: re.search(expected, node.output()) is not None, 20, "warning", node)
    finally:
        node.stop()
        broker.stop()
