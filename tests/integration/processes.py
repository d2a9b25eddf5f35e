"""Run the real ``cloud-hub`` and ``edge-node`` processes for end-to-end tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from cloud_hub.commands import keys
from schemas.messages import Command
from tests.broker import Broker, free_port

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


class Proc:
    """A child process whose output goes to a log file that failures can show."""

    def __init__(self, args: list[str], env: dict[str, str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.popen = subprocess.Popen(
            args, env={**os.environ, **env}, stdout=self._log, stderr=subprocess.STDOUT
        )

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL if it does not exit in ``timeout``; returns the exit code."""
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait()
        self._log.close()
        return self.popen.returncode

    def kill(self) -> None:
        self.popen.kill()
        self.popen.wait()
        self._log.close()

    def wait(self, timeout: float) -> int:
        """Wait for the process to exit on its own; its log is closed once it has."""
        code = self.popen.wait(timeout)
        self._log.close()
        return code

    def output(self, tail: int = 60) -> str:
        if not self._log.closed:  # a killed or exited process's log is closed, and complete
            self._log.flush()
        lines = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(lines[-tail:])


_KEYS: dict[str, tuple[Path, str]] = {}


def hub_key() -> tuple[Path, str]:
    """The hub signing key of this test run (made once) and the public key nodes trust."""
    if "hub" not in _KEYS:
        path = Path(tempfile.mkdtemp(prefix="edgeml-key-")) / "hub.key"
        _KEYS["hub"] = (path, keys.generate(path))
    return _KEYS["hub"]


def signed(command: Command) -> Command:
    """``command`` signed as ``cloud-hub`` signs it, for tests that publish commands by hand."""
    return keys.sign_command(command, keys.load(hub_key()[0]))


def _script(name: str) -> str:
    return str(Path(sys.executable).parent / name)


class Hub(Proc):
    """``cloud-hub serve`` connected to ``broker`` with its metrics on a free port."""

    def __init__(
        self, broker: Broker, workdir: Path, client_id: str, env: dict[str, str] | None = None
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.metrics_port = free_port()
        self.db = workdir / "hub.db"
        settings = {
            "CLOUD_HUB__MQTT__PORT": str(broker.port),
            "CLOUD_HUB__MQTT__PASSWORD": broker.users["hub"],
            "CLOUD_HUB__MQTT__CLIENT_ID": client_id,
            "CLOUD_HUB__MQTT__SESSION_EXPIRY_S": "300",
            "CLOUD_HUB__STORE__DB": str(self.db),
            "CLOUD_HUB__METRICS__PORT": str(self.metrics_port),
            "CLOUD_HUB__SECURITY__SIGNING_KEY": str(hub_key()[0]),
        } | (env or {})
        self.env = settings
        super().__init__([_script("cloud-hub"), "serve"], settings, workdir / "hub.log")

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run ``cloud-hub ARGS`` against the same broker and stores as this hub."""
        return subprocess.run(
            [_script("cloud-hub"), *args],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def cli_async(self, *args: str) -> subprocess.Popen[str]:
        """Start ``cloud-hub ARGS`` without waiting for it."""
        return subprocess.Popen(
            [_script("cloud-hub"), *args],
            env={**os.environ, **self.env},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            text=True,
        )

    def samples(self) -> Samples:
        """Every sample on /metrics, keyed by (name, sorted labels)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        out: Samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def value(self, name: str, **labels: str) -> float:
        """One sample's value, 0 when it is not exposed (yet)."""
        return self.samples().get((name, tuple(sorted(labels.items()))), 0.0)

    def wait_ready(self, timeout: float = 15.0) -> None:
        wait_for(self._up, timeout, "hub metrics endpoint", self)

    def _up(self) -> bool:
        try:
            self.samples()
        except OSError:
            return False
        return True


def node_config(
    path: Path, *, node: str, broker: Broker, model_dir: Path, source: str, extra: str = ""
) -> Path:
    """Write a node's TOML config; ``source`` is the body of its [source] table, ``extra``
    more tables."""
    data = path.parent / f"{node}-data"
    path.write_text(
        f'[node]\nid = "{node}"\ndata_dir = "{data}"\n'
        f'[mqtt]\nport = {broker.port}\npassword = "{broker.users[node]}"\n'
        "reconnect_min_s = 1\nreconnect_max_s = 2\n"
        f'[model]\ninitial = "{model_dir}"\n'
        "[telemetry]\ninterval_s = 1.0\ndrift_interval_s = 2.0\n"
        f'[security]\nhub_keys = ["{hub_key()[1]}"]\n'
        f"[source]\n{source}\n{extra}"
    )
    return path


class Node(Proc):
    """``edge-node run`` with a config file written by :func:`node_config`."""

    def __init__(
        self, config: Path, *, exit_when_drained: bool = True, env: dict[str, str] | None = None
    ) -> None:
        args = [_script("edge-node"), "run", "--config", str(config)]
        if exit_when_drained:
            args.append("--exit-when-drained")
        super().__init__(args, env or {}, config.with_suffix(f".{time.monotonic_ns()}.log"))


def wait_for(check: Callable[[], bool], timeout: float, what: str, *procs: Proc) -> None:
    """Poll ``check`` until it holds; on timeout fail with the processes' output."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    logs = "\n\n".join(f"--- {p.log_path.name}\n{p.output()}" for p in procs)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{logs}")
