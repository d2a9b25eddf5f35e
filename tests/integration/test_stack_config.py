"""The deployment stack's files parse, agree with each other, and the alert rules fire as meant.

docker-compose only parses here (no engine is needed for ``config``); promtool checks the
Prometheus config and runs unit tests of the alert rules on synthetic series.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.broker import DEFAULT_CONF, REPO_ROOT, rewrite_conf

pytestmark = pytest.mark.integration

COMPOSE_FILE = REPO_ROOT / "docker-compose.yml"
PROMETHEUS_DIR = REPO_ROOT / "deploy" / "prometheus"
# eclipse-mosquitto's default command: mosquitto -c /mosquitto/config/mosquitto.conf
IMAGE_CONF = "/mosquitto/config/mosquitto.conf"


def _tool(name: str, package: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} not found: install it with `apt-get install {package}` (Debian)")
    return path


def _compose(*args: str) -> subprocess.CompletedProcess[str]:
    # No engine is running or needed: point DOCKER_HOST at nothing so a contact attempt would fail.
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    env.pop("DOCKER_CONTEXT", None)
    command = [_tool("docker-compose", "docker-compose"), "-f", str(COMPOSE_FILE), *args]
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60, check=False)


def _conf_value(key: str) -> str:
    for line in DEFAULT_CONF.read_text(encoding="utf-8").splitlines():
        words = line.split()
        if words and words[0] == key:
            return " ".join(words[1:])
    raise KeyError(f"{DEFAULT_CONF}: no {key} line")


def _section_from_text(text: str, service: str, key: str) -> list[str]:
    """The lines under ``services.<service>.<key>`` of docker-compose 1.x's normalised output."""
    lines: list[str] = []
    path: list[str] = []
    for line in text.splitlines():
        indent = len(line) - len(line.lstrip(" "))
        stripped = line.strip()
        if path == ["services", service, key] and (indent > 4 or stripped.startswith("- ")):
            lines.append(stripped.removeprefix("- "))
        elif indent % 2 == 0 and ":" in stripped:
            path = [*path[: indent // 2], stripped.split(":", 1)[0]]
    return lines


def _service(service: str) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """(source, target) of each volume and the environment of a compose service."""
    as_json = _compose("config", "--format", "json")
    # Compose v2 has --format json; 1.29 prints its help for it and still exits 0.
    if as_json.returncode == 0 and as_json.stdout.lstrip().startswith("{"):
        spec: dict[str, Any] = json.loads(as_json.stdout)["services"][service]
        mounts = [(v["source"], v["target"]) for v in spec.get("volumes", [])]
        return mounts, {k: str(v) for k, v in spec.get("environment", {}).items()}
    text = _compose("config")
    assert text.returncode == 0, text.stderr
    volumes = [item.split(":")[:2] for item in _section_from_text(text.stdout, service, "volumes")]
    env_lines = _section_from_text(text.stdout, service, "environment")
    env = dict(item.split(": ", 1) for item in env_lines)
    return [(v[0], v[1]) for v in volumes], {k: v.strip("'\"") for k, v in env.items()}


def test_compose_file_is_valid() -> None:
    result = _compose("config", "-q")
    assert result.returncode == 0, result.stderr


def test_compose_broker_runs_the_config_the_tests_use() -> None:
    mounts = {target: source for source, target in _service("mosquitto")[0]}
    config_dir = Path(mounts[str(Path(IMAGE_CONF).parent)])
    assert (config_dir / "mosquitto.conf").resolve() == DEFAULT_CONF.resolve()
    # The files the config names must be inside the mounts the container gets.
    for key in ("password_file", "acl_file", "plugin_opt_config_file"):
        assert Path(_conf_value(key)).parent == Path(IMAGE_CONF).parent, key
    assert any(_conf_value("persistence_location").startswith(t + "/") for t in mounts)
    assert (config_dir / Path(_conf_value("acl_file")).name).is_file()


def test_test_broker_config_differs_only_in_site_lines() -> None:
    project = DEFAULT_CONF.read_text(encoding="utf-8")
    site = {"listener": "1 127.0.0.1", "password_file": "/p", "acl_file": "/a", "log_dest": "x"}
    site |= {"plugin": "/l.so", "plugin_opt_config_file": "/j"}
    rewritten = rewrite_conf(project, {**site, "persistence_location": "/d/"})
    kept = {*site, "persistence_location"}

    def other_lines(text: str) -> list[str]:
        return [ln for ln in text.splitlines() if not ln.split() or ln.split()[0] not in kept]

    assert other_lines(rewritten) == other_lines(project)
    assert "listener 1 127.0.0.1" in rewritten.splitlines()
    assert "max_packet_size 262144" in rewritten.splitlines()


def test_test_broker_refuses_a_second_listener() -> None:
    text = DEFAULT_CONF.read_text(encoding="utf-8") + "listener 8883\ncafile /ca.crt\n"
    with pytest.raises(ValueError, match="second listener"):
        rewrite_conf(text, {"listener": "1 127.0.0.1"})


def test_prometheus_config_is_valid() -> None:
    promtool = _tool("promtool", "prometheus")
    result = subprocess.run(
        [promtool, "check", "config", str(PROMETHEUS_DIR / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_and_recording_rules_are_valid() -> None:
    promtool = _tool("promtool", "prometheus")
    files = [str(PROMETHEUS_DIR / name) for name in ("alerts.yml", "rules.yml")]
    result = subprocess.run(
        [promtool, "check", "rules", *files],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_prometheus_scrapes_the_compose_hub() -> None:
    text = (PROMETHEUS_DIR / "prometheus.yml").read_text(encoding="utf-8")
    env = _service("hub")[1]
    assert f'"hub:{env["CLOUD_HUB__METRICS__PORT"]}"' in text
    # Bound to every interface inside the container, else Prometheus cannot reach it.
    assert env["CLOUD_HUB__METRICS__HOST"] == "0.0.0.0"


def test_compose_nodes_apply_only_what_the_compose_hub_signs() -> None:
    hub_volumes, hub_env = _service("hub")
    key = hub_env["CLOUD_HUB__SECURITY__SIGNING_KEY"]
    key_volume = next(source for source, target in hub_volumes if key.startswith(target + "/"))
    for node in ("node-1", "node-2", "node-3"):
        volumes, env = _service(node)
        trusted = env["EDGE_NODE__SECURITY__HUB_KEYS_FILE"]
        assert trusted == key + ".pub", node  # where `cloud-hub keygen` puts the public half
        assert any(s == key_volume and trusted.startswith(t + "/") for s, t in volumes), node
    model_volumes = _service("model")[0]
    assert any(s == key_volume for s, _ in model_volumes)  # the one-shot that makes the key


def _alert(labels: dict[str, str], summary: str, description: str | None = None) -> dict[str, Any]:
    annotations = {"summary": summary}
    if description is not None:
        annotations["description"] = description
    return {"exp_labels": labels, "exp_annotations": annotations}


def _rule_tests() -> list[dict[str, Any]]:
    """promtool unit tests: what each alert must (and must not) fire on, minute by minute."""
    drift = (
        "A node's drift detector holds a sustained change against the model's reference "
        "profile (cloud-hub nodes names the node and the channel): consider retraining."
    )
    series = {
        'up{job="cloud-hub", instance="hub:9100"}': "1 1 0x20",
        'edgeml_node_up{node="pump-1", group="north"}': "1 1 0x20",
        'edgeml_node_up{node="pump-2", group="south"}': "1x22",
        'edgeml_group_events_total{group="south", state="open"}': "0 0 0 1x20",
        'edgeml_group_events_total{group="south", state="close"}': "0 0 0 0 1x20",
        # A node of south drifts from minute 1 on; north has only nodes worth watching.
        'edgeml_group_drift_nodes{group="south", state="drifting"}': "0 1x20",
        'edgeml_group_drift_nodes{group="north", state="drifting"}': "0x20",
        'edgeml_group_drift_nodes{group="north", state="watch"}': "2x20",
        # The hub counts drops as growth seen, so north's sum stays flat; south's grows.
        'edgeml_group_outbox_dropped_total{group="north"}': "7 7 7x20",
        'edgeml_group_outbox_dropped_total{group="south"}': "0 0 5x20",
        'edgeml_rejected_messages_total{reason="decode", type="result"}': "0 0 3x20",
    }
    checks: list[tuple[str, str, list[dict[str, Any]]]] = [
        ("3m", "HubDown", []),  # down since 2m: still pending
        (
            "5m",
            "HubDown",
            [
                _alert(
                    {"job": "cloud-hub", "instance": "hub:9100", "severity": "critical"},
                    "cloud-hub metrics endpoint hub:9100 is down",
                    "Prometheus cannot scrape the hub: no fleet metric is current and no other "
                    "edgeml alert can fire.",
                )
            ],
        ),
        ("3m", "NodeDown", []),
        (
            "5m",
            "NodeDown",
            [
                _alert(
                    {"node": "pump-1", "group": "north", "severity": "warning"},
                    "edge node pump-1 is offline",
                    "No status or traffic from pump-1 for over 2 minutes (last will or silence).",
                )
            ],
        ),
        (
            "5m",
            "AnomalyEpisodes",
            [
                _alert(
                    {"group": "south", "state": "open", "severity": "warning"},
                    "anomaly episode opened in group south",
                    "A node's model in this group flagged an anomaly episode in the last 10 "
                    "minutes (cloud-hub events --since 15m names the node and the channels).",
                )
            ],
        ),
        ("15m", "AnomalyEpisodes", []),  # nothing new opened in the last 10 minutes
        ("5m", "DriftHigh", []),  # drifting since 1m: still pending
        (
            "7m",
            "DriftHigh",
            [
                _alert(
                    {"group": "south", "state": "drifting", "severity": "warning"},
                    "input drift on 1 node(s) of group south",
                    drift,
                )
            ],
        ),
        (
            "5m",
            "OutboxDropping",
            [
                _alert(
                    {"group": "south", "severity": "critical"},
                    "a node of group south is dropping messages from its full outbox",
                    "Data is being lost: the broker has been unreachable for long or the outbox is "
                    "too small.",
                )
            ],
        ),
        (
            "4m",
            "HubRejects",
            [
                _alert(
                    {"reason": "decode", "type": "result", "severity": "warning"},
                    "hub rejects result messages (decode)",
                    "A node speaks a schema the hub cannot decode or validate.",
                )
            ],
        ),
        ("10m", "HubRejects", []),
    ]
    for _, name, expected in checks:
        for alert in expected:
            # Every alert points at its runbook section (docs/RUNBOOK.md).
            alert["exp_annotations"]["runbook_url"] = f"docs/RUNBOOK.md#{name.lower()}"
    return [
        {
            "interval": "1m",
            "input_series": [{"series": k, "values": v} for k, v in series.items()],
            "alert_rule_test": [
                {"eval_time": t, "alertname": name, "exp_alerts": exp} for t, name, exp in checks
            ],
        }
    ]


def test_alerts_fire_when_and_only_when_meant(tmp_path: Path) -> None:
    promtool = _tool("promtool", "prometheus")
    spec = {
        "rule_files": [str(PROMETHEUS_DIR / "alerts.yml")],
        "evaluation_interval": "1m",
        "tests": _rule_tests(),
    }
    # JSON is YAML, so no YAML writer is needed.
    test_file = tmp_path / "alerts_test.yml"
    test_file.write_text(json.dumps(spec, indent=1), encoding="utf-8")
    result = subprocess.run(
        [promtool, "test", "rules", str(test_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_recording_rules_compute_what_their_names_say(tmp_path: Path) -> None:
    promtool = _tool("promtool", "prometheus")
    bucket = "edgeml_group_latency_p99_seconds_bucket"
    series = {
        # 600 readings a minute (10/s), 60 of them flagged (10 %).
        'edgeml_group_readings_total{group="north"}': "0+600x10",
        'edgeml_group_anomalous_readings_total{group="north"}': "0+60x10",
        'edgeml_node_up{node="p1", group="north"}': "0x10",
        'edgeml_node_up{node="p2", group="north"}': "1x10",
        # Ten nodes: nine at or below 5 ms, one at or below 10 ms.
        f'{bucket}{{group="north", le="0.005"}}': "9x10",
        f'{bucket}{{group="north", le="0.01"}}': "10x10",
        f'{bucket}{{group="north", le="+Inf"}}': "10x10",
    }
    expected = [
        ("group:edgeml_readings:rate5m", {"group": "north"}, 10),
        ("group:edgeml_anomalous_ratio:rate5m", {"group": "north"}, 0.1),
        ("group:edgeml_nodes_down:count", {"group": "north"}, 1),
        # The 9th of 10 nodes is the last in the 5 ms bucket.
        ("group:edgeml_node_latency_p99_seconds:p90", {"group": "north"}, 0.005),
    ]
    spec = {
        "rule_files": [str(PROMETHEUS_DIR / "rules.yml")],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": k, "values": v} for k, v in series.items()],
                "promql_expr_test": [
                    {"expr": name, "eval_time": "8m", "exp_samples": [
                        {"labels": name + "{" + ",".join(f'{k}="{v}"' for k, v in labels.items())
                         + "}", "value": value}
                    ]}
                    for name, labels, value in expected
                ],
            }
        ],
    }  # fmt: skip
    test_file = tmp_path / "rules_test.yml"
    test_file.write_text(json.dumps(spec, indent=1), encoding="utf-8")
    result = subprocess.run(
        [promtool, "test", "rules", str(test_file)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
