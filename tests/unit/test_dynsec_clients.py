"""mosquitto/dynsec_clients.py: node accounts for the dynamic security plugin, bound to ids."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path

from tests.broker import REPO_ROOT, dynsec_clients

SCRIPT = REPO_ROOT / "mosquitto" / "dynsec_clients.py"


def _add(path: Path, node: str, password: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(path), node],
        input=password,
        capture_output=True,
        text=True,
        check=False,
    )


def test_a_node_is_bound_to_its_client_id_with_the_plugins_hash(tmp_path: Path) -> None:
    path = tmp_path / "dynamic-security.json"
    assert _add(path, "pump-7", "s3cret").returncode == 0
    data = json.loads(path.read_text())
    (entry,) = data["clients"]
    assert entry["username"] == entry["clientid"] == "pump-7"
    salt = base64.b64decode(entry["salt"])
    digest = hashlib.pbkdf2_hmac("sha512", b"s3cret", salt, entry["iterations"], 64)
    assert base64.b64decode(entry["password"]) == digest
    # Nothing granted by the plugin: the ACL file decides every topic.
    assert not any(data["defaultACLAccess"].values()) and data["roles"] == []
    assert path.stat().st_mode & 0o077 == 0


def test_adding_again_replaces_the_password_and_keeps_the_others(tmp_path: Path) -> None:
    path = tmp_path / "dynamic-security.json"
    for node, password in (("pump-1", "a"), ("pump-2", "b"), ("pump-1", "c")):
        assert _add(path, node, password).returncode == 0
    clients = json.loads(path.read_text())["clients"]
    assert sorted(c["username"] for c in clients) == ["pump-1", "pump-2"]
    assert "updated node 'pump-1'" in _add(path, "pump-1", "d").stderr


def test_an_empty_password_or_a_broken_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "dynamic-security.json"
    assert _add(path, "pump-1", "").returncode == 2
    path.write_text("[1, 2]")
    done = _add(path, "pump-1", "x")
    assert done.returncode == 1 and "not a dynamic security file" in done.stderr


def test_init_writes_an_empty_file_once(tmp_path: Path) -> None:
    path = tmp_path / "dynamic-security.json"
    module = dynsec_clients()
    assert module.main(["--init", str(path)]) == 0
    assert json.loads(path.read_text())["clients"] == []
    path.write_text('{"clients": [{"username": "kept"}]}')
    assert module.main(["--init", str(path)]) == 0
    assert "kept" in path.read_text()
