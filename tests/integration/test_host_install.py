"""A host install works as written: README's "Running it for real" run line by line, the host
broker config kept in step with the container's, and the systemd units verified."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.broker import DEFAULT_CONF, DYNSEC_PLUGIN, REPO_ROOT, free_port, rewrite_conf

pytestmark = pytest.mark.integration

README = REPO_ROOT / "README.md"
HOST_CONF = REPO_ROOT / "mosquitto" / "mosquitto-host.conf"
UNITS = REPO_ROOT / "deploy" / "host" / "systemd"
SITE_KEYS = {
    *("listener", "password_file", "acl_file", "persistence_location", "log_dest"),
    *("plugin", "plugin_opt_config_file"),
}


def readme_snippet(section: str) -> str:
    """The first ```sh block under the README heading ``section``."""
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {section}\n")
    match = re.compile(r"```sh\n(.*?)```", re.S).search(text, start)
    assert match is not None, f"README.md: no sh block under '## {section}'"
    return match.group(1)


@pytest.fixture
def clean_folder() -> Iterator[Path]:
    # Not under pytest's tmp_path: its folders are 0700, and Mosquitto started as root reads
    # its files as the `mosquitto` user, as on a real host.
    folder = Path(tempfile.mkdtemp(prefix="edgeml-host-"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_running_it_for_real_works_as_written(clean_folder: Path) -> None:
    snippet = readme_snippet("Running it for real")
    assert "cloud-hub nodes --watch" in snippet.splitlines()[-1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CLOUD_HUB", "EDGE_NODE"))}
    env |= {
        "EDGEML_ETC": str(clean_folder / "etc"),
        "EDGEML_VAR": str(clean_folder / "var"),
        "EDGEML_MQTT_PORT": str(free_port()),
        # The one setting the README's files cannot know: a free port for /metrics.
        "CLOUD_HUB__METRICS__PORT": str(free_port()),
        "PATH": f"{env.get('PATH', '')}:/usr/sbin",  # Debian's mosquitto
    }
    log = clean_folder / "walk.log"
    with log.open("wb") as out:
        # Its own session: the broker, hub and node it starts in the background stop with it.
        walk = subprocess.Popen(
            ["bash", "-e", "-c", snippet],
            cwd=REPO_ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 90
        pattern = re.compile(r"^pump-7\s+online\s+\d+s ago\s+pump-pca@1\s", re.M)
        while not pattern.search(log.read_text(errors="replace")):
            assert walk.poll() is None, f"the walk stopped:\n{log.read_text(errors='replace')}"
            assert time.monotonic() < deadline, log.read_text(errors="replace")[-4000:]
            time.sleep(0.5)
    finally:
        os.killpg(walk.pid, signal.SIGTERM)
        try:
            walk.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(walk.pid, signal.SIGKILL)
            walk.wait()
    text = log.read_text(errors="replace")
    assert "registered  pump-pca@1" in text
    # Everything lives in the folders the README names; secrets are private.
    etc = clean_folder / "etc"
    for secret in ("hub.pw", "pump-7.pw", "mosquitto/passwd", "mosquitto/dynamic-security.json"):
        assert (etc / secret).stat().st_mode & 0o077 == 0, secret
    assert (clean_folder / "var" / "hub" / "hub.db").is_file()
    assert (clean_folder / "var" / "node" / "outbox.db").is_file()


def _other_lines(text: str) -> list[str]:
    """Lines that are settings, minus the ones a site sets."""
    out = []
    for line in text.splitlines():
        words = line.split()
        if words and not words[0].startswith("#") and words[0] not in SITE_KEYS:
            out.append(line)
    return out


def test_host_broker_config_has_the_container_limits() -> None:
    host = HOST_CONF.read_text(encoding="utf-8")
    assert _other_lines(host) == _other_lines(DEFAULT_CONF.read_text(encoding="utf-8"))
    # Paths under the folders README names; a plain listener on loopback only.
    assert "password_file /etc/edgeml/mosquitto/passwd" in host.splitlines()
    dynsec = "plugin_opt_config_file /etc/edgeml/mosquitto/dynamic-security.json"
    assert dynsec in host.splitlines()
    # Both load the dynamic security plugin (each at its system's path) beside the same ACL.
    for conf in (host, DEFAULT_CONF.read_text(encoding="utf-8")):
        assert any(x.startswith("plugin ") and x.endswith(DYNSEC_PLUGIN) for x in conf.splitlines())
    assert "persistence_location /var/lib/edgeml/mosquitto/" in host.splitlines()
    assert "listener 1883 127.0.0.1" in host.splitlines()
    rewrite_conf(host, {"listener": "1 127.0.0.1"}, str(HOST_CONF))  # one active listener


def test_systemd_units_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze not installed (package systemd): units not verified")
    units = []
    for unit in sorted(UNITS.glob("*.service")):
        text = unit.read_text(encoding="utf-8")
        for needed in ("User=edgeml", "StateDirectory=edgeml/", "Restart=on-failure"):
            assert needed in text, f"{unit.name}: no {needed}"
        # The units expect the checkout at /opt/edgeml; verify checks that ExecStart exists.
        copy = tmp_path / unit.name
        copy.write_text(text.replace("/opt/edgeml", str(REPO_ROOT)), encoding="utf-8")
        units.append(str(copy))
    assert len(units) == 2
    result = subprocess.run(
        [analyze, "verify", *units], capture_output=True, text=True, timeout=60, check=False
    )
    # verify exits 0 on unknown keys and bad values too; it only warns, so warnings fail here.
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), (
        result.stdout + result.stderr
    )
