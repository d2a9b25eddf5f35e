"""Run a real Mosquitto with the project's own config and ACL (clients: tests/mqtt_clients.py).

The broker config is mosquitto/mosquitto.conf with only its site-specific lines rewritten (see
``rewrite_conf``), so the queue, packet-size and persistence limits under test are the project's.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import ModuleType, TracebackType

from tests.mqtt_clients import try_connect
from tests.tls import ServerFiles

log = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONF = REPO_ROOT / "mosquitto" / "mosquitto.conf"
DEFAULT_ACL = REPO_ROOT / "mosquitto" / "acl"
INSTALL_HINT = (
    "install Mosquitto: `apt-get install mosquitto mosquitto-clients` (Debian/Ubuntu), "
    "`brew install mosquitto` (macOS)"
)
# Where distributions put the broker; /usr/sbin is often not on a normal user's PATH.
_SBIN = os.pathsep.join(["/usr/sbin", "/usr/local/sbin", "/opt/homebrew/sbin"])
# Lines that depend on where the broker runs; every other line is kept as the project wrote it.
SITE_KEYS = frozenset(
    {
        *("listener", "persistence_location", "password_file", "acl_file", "log_dest"),
        *("plugin", "plugin_opt_config_file"),
    }
)
# Accounts kept in the password file; every other account is a node, kept in the dynamic
# security plugin's file and bound to its client id (mosquitto/dynsec_clients.py).
PASSWORD_FILE_ACCOUNTS = frozenset({"hub"})
DYNSEC_PLUGIN = "mosquitto_dynamic_security.so"
# Where distributions put the plugin (Debian by architecture, the eclipse-mosquitto image).
_PLUGIN_DIRS = (
    "/usr/lib/x86_64-linux-gnu",
    "/usr/lib/aarch64-linux-gnu",
    "/usr/lib/arm-linux-gnueabihf",
    "/usr/lib",
    "/usr/local/lib",
    "/opt/homebrew/lib",
)


def find_dynsec_plugin() -> str | None:
    """Path of Mosquitto's dynamic security plugin, None if it is not installed."""
    for folder in _PLUGIN_DIRS:
        path = Path(folder) / DYNSEC_PLUGIN
        if path.is_file():
            return str(path)
    return None


def dynsec_clients() -> ModuleType:
    """mosquitto/dynsec_clients.py, the same code mosquitto/add-node runs."""
    path = REPO_ROOT / "mosquitto" / "dynsec_clients.py"
    spec = importlib.util.spec_from_file_location("dynsec_clients", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def find_mosquitto(program: str = "mosquitto") -> str | None:
    """Path of the broker (or another Mosquitto ``program``), None if it is not installed."""
    return shutil.which(program) or shutil.which(program, path=_SBIN)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def rewrite_conf(text: str, site: dict[str, str], source: str = "mosquitto.conf") -> str:
    """Replace the site-specific lines of a Mosquitto config with ``site`` (key -> value).

    Each key of ``site`` is written once, where the config first set it (or appended at the end);
    later lines with that key are dropped. A second active ``listener`` is refused, because its
    listener-specific options (TLS files) would silently move to the test listener.
    """
    out: list[str] = []
    written: set[str] = set()
    for number, line in enumerate(text.splitlines(), start=1):
        words = line.split()
        key = words[0] if words and not words[0].startswith("#") else ""
        if key not in site and key not in SITE_KEYS:
            out.append(line)
            continue
        if key == "listener" and "listener" in written:
            raise ValueError(f"{source}:{number}: a second listener is not supported by the tests")
        if key in site and key not in written:
            out.append(f"{key} {site[key]}")
            written.add(key)
    out.extend(f"{key} {value}" for key, value in site.items() if key not in written)
    return "\n".join(out) + "\n"


TLS_KEYS = ("cafile", "certfile", "keyfile", "require_certificate")


def tls_options(text: str, source: str = "mosquitto.conf") -> list[tuple[str, str]]:
    """The options of the config's commented-out TLS listener (``#listener 8883``), in order."""
    lines = text.splitlines()
    try:
        start = lines.index("#listener 8883")
    except ValueError:
        raise ValueError(f"{source}: no '#listener 8883' block to test TLS with") from None
    out = []
    for line in lines[start + 1 :]:
        words = line.lstrip("#").split()
        if not line.startswith("#") or not words:
            break
        if words[0] in TLS_KEYS and len(words) == 2:
            out.append((words[0], words[1]))
    if [k for k, _ in out][:3] != ["cafile", "certfile", "keyfile"]:
        raise ValueError(f"{source}: the TLS block lacks cafile, certfile and keyfile")
    return out


class Broker:
    """A Mosquitto process on 127.0.0.1 with its own password file, config and persistence dir."""

    host: str = "127.0.0.1"

    def __init__(
        self,
        workdir: Path,
        users: dict[str, str],
        port: int | None = None,
        conf: Path = DEFAULT_CONF,
        acl: Path = DEFAULT_ACL,
        *,
        tls: ServerFiles | None = None,
    ) -> None:
        self.workdir = Path(workdir)
        self.users = dict(users)
        self.port = port if port is not None else free_port()
        self.conf = Path(conf)
        self.acl = Path(acl)
        self.data_dir = self.workdir / "data"
        self.passwd_path = self.workdir / "passwd"
        self.dynsec_path = self.workdir / "dynamic-security.json"
        self.conf_path = self.workdir / "mosquitto.conf"
        self.log_path = self.workdir / "mosquitto.log"
        # With TLS the one listener is the config's (commented) TLS listener, on this port.
        self.tls = tls
        self._proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Broker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True while the broker process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def start(self, timeout: float = 10.0) -> None:
        """Write passwd and config, start ``mosquitto -c`` and wait until a user can log in."""
        binary = find_mosquitto()
        if binary is None:
            raise RuntimeError(f"mosquitto not found: {INSTALL_HINT}")
        if self.running:
            raise RuntimeError(f"broker already running on port {self.port}")
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(exist_ok=True)
        self._write_passwd()
        self.conf_path.write_text(self._site_conf(), encoding="utf-8")
        with self.log_path.open("ab") as log_file:
            self._proc = subprocess.Popen(
                [binary, "-c", str(self.conf_path)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
            )
        try:
            self._wait_ready(timeout)
        except BaseException:
            self.kill()
            raise
        log.info("mosquitto up on %s:%d (pid %d)", self.host, self.port, self._proc.pid)

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (the broker saves its persistence file), SIGKILL if it outlives ``timeout``."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("mosquitto ignored SIGTERM for %.0f s; killing it", timeout)
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        """SIGKILL: a hard crash, nothing saved since the last autosave."""
        proc, self._proc = self._proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def pause(self) -> None:
        """SIGSTOP: the broker holds every connection open and answers nothing (a partition)."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT after :meth:`pause`."""
        if self._proc is not None:
            self._proc.send_signal(signal.SIGCONT)

    def restart(self, timeout: float = 10.0) -> None:
        """Clean stop, then start again on the same port with the same persistence dir."""
        self.stop()
        self.start(timeout)

    def log_tail(self, lines: int = 40) -> str:
        """The last ``lines`` lines the broker wrote (stdout and stderr)."""
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return "(no broker log yet)"
        return "\n".join(text.splitlines()[-lines:])

    def _site_conf(self) -> str:
        site = {
            "listener": f"{self.port} {self.host}",
            "persistence_location": f"{self.data_dir}/",
            "password_file": str(self.passwd_path),
            "acl_file": str(self.acl),
            "log_dest": "stdout",
            "plugin": self._plugin(),
            "plugin_opt_config_file": str(self.dynsec_path),
        }
        if os.geteuid() == 0:
            # As root, Mosquitto drops to the "mosquitto" user before reading the password file
            # and writing persistence, and that user cannot read this private work dir.
            site["user"] = "root"
        text = self.conf.read_text(encoding="utf-8")
        conf = rewrite_conf(text, site, str(self.conf))
        if self.tls is None:
            return conf
        files = {"cafile": self.tls.ca, "certfile": self.tls.cert, "keyfile": self.tls.key}
        options = [f"{k} {files.get(k, v)}" for k, v in tls_options(text, str(self.conf))]
        return conf + "\n".join(options) + "\n"

    @staticmethod
    def _plugin() -> str:
        plugin = find_dynsec_plugin()
        if plugin is None:
            raise RuntimeError(f"{DYNSEC_PLUGIN} not found: {INSTALL_HINT}")
        return plugin

    def _write_dynsec(self, nodes: dict[str, str]) -> None:
        dynsec = dynsec_clients()
        data = dynsec.empty()
        for name, password in nodes.items():
            data, _ = dynsec.with_client(data, name, password)
        self.dynsec_path.write_text(json.dumps(data), encoding="utf-8")
        self.dynsec_path.chmod(0o600)

    def _write_passwd(self) -> None:
        tool = find_mosquitto("mosquitto_passwd")
        if tool is None:
            raise RuntimeError(f"mosquitto_passwd not found: {INSTALL_HINT}")
        for name, password in self.users.items():
            if ":" in name or "\n" in name + password:
                raise ValueError(f"user {name!r}: ':' and newlines are not allowed")
        hubs = {n: p for n, p in self.users.items() if n in PASSWORD_FILE_ACCOUNTS}
        self._write_dynsec({n: p for n, p in self.users.items() if n not in hubs})
        # One clear-text file hashed in place by `-U`: one process instead of one per user.
        self.passwd_path.touch(mode=0o600)
        self.passwd_path.chmod(0o600)
        self.passwd_path.write_text(
            "".join(f"{name}:{password}\n" for name, password in hubs.items()),
            encoding="utf-8",
        )
        subprocess.run([tool, "-U", str(self.passwd_path)], check=True, capture_output=True)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        user = "hub" if "hub" in self.users else next(iter(self.users), None)
        while True:
            assert self._proc is not None
            if self._proc.poll() is not None:
                raise RuntimeError(
                    f"mosquitto exited with {self._proc.returncode}; log:\n{self.log_tail()}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"mosquitto not ready after {timeout} s; log:\n{self.log_tail()}"
                )
            if self._accepts(user):
                return
            time.sleep(0.05)

    def _accepts(self, user: str | None) -> bool:
        # A TCP connect alone can succeed before the broker has loaded its password file.
        try:
            if user is None:
                socket.create_connection((self.host, self.port), timeout=0.5).close()
                return True
            ca = self.tls.ca if self.tls else None
            code = try_connect(self.host, self.port, user, self.users[user], timeout=2.0, ca=ca)
        except (OSError, TimeoutError):
            return False
        if code.is_failure:
            raise RuntimeError(f"broker refused {user!r}: {code}; log:\n{self.log_tail()}")
        return True
