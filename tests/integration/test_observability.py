"""The plant's view, end to end: dashboards and alerts against a real stack on loopback.

Real nodes feed a real hub through the session's Mosquitto; a real Prometheus scrapes the hub
every second with the project's alert rules; a real Alertmanager, configured from
deploy/alertmanager/alertmanager.yml with only its site lines pointed at loopback, delivers to
a webhook receiver the test runs. Every query of every Grafana panel must return data.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.broker import REPO_ROOT, Broker, free_port
from tests.integration.models import sim_model
from tests.integration.observability import (
    Alertmanager,
    Prometheus,
    WebhookReceiver,
    get_json,
    tool,
)
from tests.integration.processes import Hub, Node, Proc, node_config, wait_for
from tests.mqtt_clients import close, mqtt_client, publish

pytestmark = pytest.mark.integration

DASHBOARDS = REPO_ROOT / "deploy" / "grafana" / "dashboards"
ALERTS = REPO_ROOT / "deploy" / "prometheus" / "alerts.yml"
ALERTMANAGER = REPO_ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
RUNBOOK = REPO_ROOT / "docs" / "RUNBOOK.md"
NODES = ("obs-1", "obs-2")
SPARE = "obs-3"
# What Grafana puts in for its variables: $__rate_interval is 4 scrape intervals here.
GRAFANA_VARIABLES = {"$__rate_interval": "4s", "$node": NODES[0]}


@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel: str
    ref: str
    expr: str

    @property
    def record(self) -> str:
        """A recording rule name for this query (promtool checks the expression)."""
        return f"panel:{self.dashboard.replace('-', '_')}:{self.ref}"

    def concrete(self) -> str:
        expr = self.expr
        for name, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(name, value)
        return expr


def panel_queries() -> list[PanelQuery]:
    """Every target of every panel of every committed dashboard."""
    out = []
    for path in sorted(DASHBOARDS.glob("*.json")):
        board = json.loads(path.read_text(encoding="utf-8"))
        for panel in board["panels"]:
            for target in panel["targets"]:
                ref = f"{panel['id']}_{target['refId']}"
                out.append(PanelQuery(board["uid"], panel["title"], ref, target["expr"]))
    return out


@dataclass
class Stack:
    hub: Hub
    prometheus: Prometheus
    receiver: WebhookReceiver


def _site_alertmanager_config(receiver: WebhookReceiver) -> str:
    """The project's Alertmanager config with its site lines pointed at loopback."""
    text = ALERTMANAGER.read_text(encoding="utf-8")
    for old, new in (
        ("http://alert-receiver:9095", receiver.url),
        # Nothing listens there: a critical alert's e-mail fails fast and stays on loopback.
        ("smtp.example.org:587", f"127.0.0.1:{free_port()}"),
        ("group_wait: 30s", "group_wait: 1s"),
    ):
        assert old in text, f"{ALERTMANAGER} no longer has {old!r}; update this test"
        text = text.replace(old, new)
    return text


@pytest.fixture(scope="module")
def stack(broker: Broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    work = tmp_path_factory.mktemp("observability")
    model = sim_model(work / "model")
    receiver = WebhookReceiver()
    procs: list[Proc] = []
    try:
        alertmanager = Alertmanager(work / "alertmanager", _site_alertmanager_config(receiver))
        procs.append(alertmanager)
        hub = Hub(broker, work / "hub", client_id="hub-observability")
        procs.append(hub)
        hub.wait_ready()
        for seed, node in enumerate(NODES, start=1):
            source = f'kind = "sim"\nrate_hz = 20\nseed = {seed}\n'
            config = node_config(
                work / f"{node}.toml", node=node, broker=broker, model_dir=model, source=source
            )
            procs.append(Node(config, exit_when_drained=False))
        prometheus = Prometheus(work / "prometheus", hub.metrics_port, [ALERTS], alertmanager.port)
        procs.append(prometheus)
        yield Stack(hub, prometheus, receiver)
    finally:
        for proc in reversed(procs):
            proc.stop()
        receiver.close()


def _send_bad_results(broker: Broker, count: int) -> None:
    """Messages the hub must reject (not msgpack), spread over scrapes so rate() sees them."""
    # An account of its own: a node's account is bound to its client id, so logging in as a
    # running node would take its session.
    client = mqtt_client(broker, SPARE)
    try:
        for _ in range(count):
            publish(client, f"edgeml/v1/{SPARE}/result", b"\xc1 not msgpack")
            time.sleep(1.2)
    finally:
        close(client)


def test_every_panel_query_is_valid_promql(tmp_path: Path) -> None:
    queries = panel_queries()
    assert len(queries) >= 30  # three dashboards' worth: a lost file would shrink this
    rules = {
        "groups": [
            {
                "name": "panels",
                "rules": [{"record": q.record, "expr": q.concrete()} for q in queries],
            }
        ]
    }
    path = tmp_path / "panels.rules.yml"
    path.write_text(json.dumps(rules, indent=1), encoding="utf-8")
    result = subprocess.run(
        [tool("promtool", "prometheus"), "check", "rules", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(queries)} rules found" in result.stdout


def test_every_panel_returns_data_from_a_real_hub(stack: Stack, broker: Broker) -> None:
    _send_bad_results(broker, 2)  # the rejects panel needs a reject
    queries = panel_queries()
    empty: list[str] = []

    def all_have_data() -> bool:
        empty[:] = [
            f"{q.dashboard} / {q.panel}: {q.concrete()}"
            for q in queries
            if not stack.prometheus.query(q.concrete())
        ]
        return not empty

    try:
        wait_for(all_have_data, 45, "data for every panel", stack.hub, stack.prometheus)
    except AssertionError as exc:
        raise AssertionError("panels without data:\n" + "\n".join(empty)) from exc
    # The $node variable's query (label_values(edgeml_node_up, node)) lists the real nodes.
    nodes = {s["metric"]["node"] for s in stack.prometheus.query("edgeml_node_up")}
    assert set(NODES) <= nodes

    # Numbers, not just series: the fleet scores about 40 readings/s, and both nodes are up.
    def fleet_rate() -> float:
        readings = stack.prometheus.query("sum(rate(edgeml_readings_total[8s]))")
        return float(readings[0]["value"][1]) if readings else 0.0

    wait_for(lambda: 30 < fleet_rate() < 50, 30, "about 40 readings/s", stack.hub)
    assert float(stack.prometheus.query('edgeml_nodes{state="online"}')[0]["value"][1]) >= 2


def test_a_firing_rule_reaches_the_webhook_through_alertmanager(
    stack: Stack, broker: Broker
) -> None:
    _send_bad_results(broker, 3)  # HubRejects: any reject rate above zero, no `for`

    def delivered() -> list[dict[str, Any]]:
        return [
            {**alert, "path": path, "receiver": body["receiver"]}
            for path, body in stack.receiver.bodies()
            for alert in body["alerts"]
            if alert["labels"].get("alertname") == "HubRejects"
        ]

    wait_for(lambda: bool(delivered()), 45, "HubRejects at the webhook", stack.prometheus)
    alert = delivered()[0]
    assert alert["status"] == "firing"
    # Routed by severity: a warning goes to the team's webhook, not to on-call.
    assert (alert["receiver"], alert["path"]) == ("team-webhook", "/edgeml/warning")
    assert alert["labels"]["severity"] == "warning"
    assert alert["labels"]["reason"] == "malformed"
    annotations = alert["annotations"]
    assert "malformed" in annotations["summary"]
    assert annotations["description"]
    assert annotations["runbook_url"] == "docs/RUNBOOK.md#hubrejects"


def test_every_alert_rule_has_summary_description_and_a_runbook_section(stack: Stack) -> None:
    # The rules as the real Prometheus loaded them, not as a regex reads the file.
    groups = get_json(f"{stack.prometheus.url}/api/v1/rules")["data"]["groups"]
    rules = [r for g in groups for r in g["rules"] if r["type"] == "alerting"]
    assert len(rules) >= 6
    headings = set(re.findall(r"^## (\w+)$", RUNBOOK.read_text(encoding="utf-8"), re.M))
    for rule in rules:
        name, annotations = rule["name"], rule["annotations"]
        assert annotations.get("summary") and annotations.get("description"), name
        assert annotations.get("runbook_url") == f"docs/RUNBOOK.md#{name.lower()}", name
        assert name in headings, f"{RUNBOOK} has no '## {name}' section"
        assert rule["labels"].get("severity") in {"warning", "critical"}, name


@pytest.mark.parametrize(
    ("severity", "receiver"), [("critical", "on-call"), ("warning", "team-webhook")]
)
def test_alertmanager_routes_by_severity(severity: str, receiver: str) -> None:
    amtool = tool("amtool", "prometheus-alertmanager")
    check = subprocess.run(
        [amtool, "check-config", str(ALERTMANAGER)], capture_output=True, text=True, check=False
    )
    assert check.returncode == 0, check.stdout + check.stderr
    routed = subprocess.run(
        [
            amtool,
            "config",
            "routes",
            "test",
            f"--config.file={ALERTMANAGER}",
            f"severity={severity}",
            "alertname=AnyRule",
            "node=pump-1",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert routed.stdout.split() == [receiver], routed.stdout + routed.stderr
