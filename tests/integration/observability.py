"""Prometheus, Alertmanager and a webhook receiver as real processes on loopback, for tests.

Prometheus and Alertmanager are the Debian packages (``prometheus``,
``prometheus-alertmanager``; scripts/setup.sh installs them for the tests).
"""

from __future__ import annotations

import json
import shutil
import threading
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.broker import free_port
from tests.integration.processes import Proc, wait_for


def tool(name: str, package: str) -> str:
    """Path of a program; fails the test (never skips) when its package is missing."""
    path = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
    if path is None:
        pytest.fail(f"{name} not found: install it with `apt-get install {package}` (Debian)")
    return path


def get_json(url: str) -> Any:
    """GET ``url`` and decode its JSON body."""
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def _ready(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


class Prometheus(Proc):
    """``prometheus`` scraping the hub at ``hub_port`` every second, with ``rule_files``."""

    def __init__(
        self, workdir: Path, hub_port: int, rule_files: list[Path], alertmanager_port: int
    ) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        config = {
            # 1 s so that a rate over 4 s ($__rate_interval at this interval) has data at once.
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(p) for p in rule_files],
            "scrape_configs": [
                {
                    "job_name": "cloud-hub",
                    "static_configs": [{"targets": [f"127.0.0.1:{hub_port}"]}],
                }
            ],
            "alerting": {
                "alertmanagers": [
                    {"static_configs": [{"targets": [f"127.0.0.1:{alertmanager_port}"]}]}
                ]
            },
        }
        path = workdir / "prometheus.yml"
        path.write_text(json.dumps(config, indent=1), encoding="utf-8")  # JSON is YAML
        args = [
            tool("prometheus", "prometheus"),
            f"--config.file={path}",
            f"--storage.tsdb.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
        ]
        super().__init__(args, {}, workdir / "prometheus.log")
        wait_for(lambda: _ready(f"{self.url}/-/ready"), 30, "prometheus ready", self)

    @property
    def url(self) -> str:
        """Base URL of the HTTP API."""
        return f"http://127.0.0.1:{self.port}"

    def query(self, expr: str) -> list[dict[str, Any]]:
        """The result vector of an instant query; AssertionError naming the query on error."""
        body = get_json(f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}")
        assert body["status"] == "success", f"{expr}: {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result


class Alertmanager(Proc):
    """``prometheus-alertmanager`` with ``config`` text, clustering off, on a free port."""

    def __init__(self, workdir: Path, config: str) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        path = workdir / "alertmanager.yml"
        path.write_text(config, encoding="utf-8")
        args = [
            tool("prometheus-alertmanager", "prometheus-alertmanager"),
            f"--config.file={path}",
            f"--storage.path={workdir / 'data'}",
            f"--web.listen-address=127.0.0.1:{self.port}",
            "--cluster.listen-address=",  # no gossip port on every interface
        ]
        super().__init__(args, {}, workdir / "alertmanager.log")
        url = f"http://127.0.0.1:{self.port}/-/ready"
        wait_for(lambda: _ready(url), 30, "alertmanager ready", self)


class WebhookReceiver:
    """An HTTP server on 127.0.0.1 that keeps every JSON body POSTed to it, by path."""

    def __init__(self) -> None:
        self.received: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length))
                with receiver._lock:
                    receiver.received.append((self.path, body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the test reports what arrived; no access log on stderr

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def bodies(self) -> list[tuple[str, dict[str, Any]]]:
        """What arrived so far: (path, JSON body)."""
        with self._lock:
            return list(self.received)

    def close(self) -> None:
        """Stop serving and release the port."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
