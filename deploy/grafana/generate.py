"""Writes the Grafana dashboards in deploy/grafana/dashboards/ from the panel lists below.

The dashboards are code: edit the lists here, run ``python deploy/grafana/generate.py``, and
commit the JSON it writes (sorted keys, two-space indent, so a diff shows what changed).
``--check`` fails when the committed JSON differs from what this file generates.

Every query uses only what ``cloud-hub serve`` exposes (cloud_hub/ingest/metrics.py,
fleet_series.py) and what
Prometheus records about its scrape of it (``up``, ``scrape_duration_seconds``).
``tests/integration/test_observability.py`` runs each query against a real Prometheus scraping
a real hub fed by real nodes and requires data from every one.

No dependency: a dashboard is a small JSON document, and grafana-foundation-sdk would add a
package (and its release cadence) for what forty lines of dictionaries do here.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OUT = Path(__file__).resolve().parent / "dashboards"
# The provisioned data source (deploy/grafana/provisioning/datasources/prometheus.yml).
DATASOURCE = {"type": "prometheus", "uid": "edgeml-prometheus"}
RATE = "$__rate_interval"
NODE = 'node="$node"'


@dataclass(frozen=True)
class Query:
    """One PromQL expression and how its series are named in the legend."""

    expr: str
    legend: str = ""


@dataclass(frozen=True)
class Panel:
    """A panel: ``kind`` is a Grafana panel type (timeseries, stat, table, bargauge)."""

    title: str
    queries: tuple[Query, ...]
    kind: str = "timeseries"
    unit: str = "short"
    width: int = 8
    description: str = ""


@dataclass(frozen=True)
class Dashboard:
    """A dashboard; ``node_variable`` adds the ``$node`` selector."""

    uid: str
    title: str
    panels: tuple[Panel, ...]
    node_variable: bool = False
    links: tuple[str, ...] = field(default=())


def q(expr: str, legend: str = "") -> Query:
    """Shorthand for a query."""
    return Query(expr, legend)


FLEET = Dashboard(
    uid="edgeml-fleet",
    title="edgeml / Fleet overview",
    links=("edgeml-node", "edgeml-hub"),
    panels=(
        Panel(
            "Nodes online",
            (q('edgeml_nodes{state="online"}', "online"),),
            kind="stat",
            width=4,
        ),
        Panel(
            "Nodes offline",
            (q('edgeml_nodes{state="offline"}', "offline"),),
            kind="stat",
            width=4,
        ),
        Panel(
            "Readings/s (fleet)",
            (q(f"rate(edgeml_fleet_readings_total[{RATE}])", "readings/s"),),
            kind="stat",
            unit="reqps",
            width=4,
        ),
        Panel(
            "Models in use",
            (q("edgeml_fleet_nodes_by_model", "{{model}}@{{version}}"),),
            kind="bargauge",
            width=6,
            description="Nodes running each model version.",
        ),
        Panel(
            "Command acks (rollouts)",
            (
                q(
                    f"sum by (type, status) (increase(edgeml_command_acks_total[{RATE}]))",
                    "{{type}} {{status}}",
                ),
            ),
            width=6,
            description="Deploys, rollbacks, retrains and pings answered by nodes.",
        ),
        Panel(
            "Readings/s by group",
            (q(f"sum by (group) (rate(edgeml_group_readings_total[{RATE}]))", "{{group}}"),),
            unit="reqps",
            description="Per group or site the nodes announce ([node] group; at most "
            "metrics.max_groups names, the rest 'other'). Bounded whatever the fleet's size.",
        ),
        Panel(
            "Anomaly rate by group",
            (
                q(
                    f"sum by (group) (rate(edgeml_group_anomalous_readings_total[{RATE}]))"
                    f" / sum by (group) (rate(edgeml_group_readings_total[{RATE}]))",
                    "{{group}}",
                ),
            ),
            unit="percentunit",
            description="Share of readings the nodes' models flagged.",
        ),
        Panel(
            "Open anomaly episodes by group",
            (
                q(
                    'sum by (group) (edgeml_group_events_total{state="open"})'
                    ' - sum by (group) (edgeml_group_events_total{state="close"})',
                    "{{group}}",
                ),
            ),
            kind="bargauge",
            description="Episodes opened and not yet closed (counted since the hub started); "
            "cloud-hub events --open names the nodes.",
        ),
        Panel(
            "Nodes drifting or worth watching, by group",
            (q('edgeml_group_drift_nodes{state!="ok"}', "{{group}} {{state}}"),),
            width=8,
            description="From each node's last drift report; the DriftHigh alert fires when a "
            "group has had a drifting node for 5 minutes. cloud-hub nodes names them.",
        ),
        Panel(
            "Inference latency p99: 90th percentile of nodes, by group",
            (
                q(
                    "histogram_quantile(0.9, sum by (group, le) "
                    "(edgeml_group_latency_p99_seconds_bucket))",
                    "{{group}}",
                ),
            ),
            unit="s",
            width=8,
        ),
        Panel(
            "Score p99 in thresholds: 90th percentile of nodes, by model version",
            (
                q(
                    "histogram_quantile(0.9, sum by (model, version, le) "
                    "(edgeml_model_score_p99_ratio_bucket))",
                    "{{model}}@{{version}}",
                ),
            ),
            width=8,
            description="1 = at the model's threshold. From the nodes' drift reports.",
        ),
        Panel(
            "Rollouts by state",
            (q("edgeml_rollouts", "{{state}}"),),
            kind="bargauge",
            width=8,
            description="cloud-hub rollout status names them; stopped = by the gate.",
        ),
        Panel(
            "Rollout gate decisions",
            (
                q(
                    f"sum by (decision) (increase(edgeml_rollout_gate_decisions_total[{RATE}]))",
                    "{{decision}}",
                ),
            ),
            width=8,
            description="Waves and shadow phases judged; a fail stops the rollout and rolls "
            "the wave back.",
        ),
        Panel(
            "Shadow runs by state",
            (q("edgeml_shadow_runs", "{{state}}"),),
            kind="bargauge",
            width=8,
            description="Nodes by their newest shadow-run report (cloud-hub shadow status).",
        ),
    ),
)

NODE_VIEW = Dashboard(
    uid="edgeml-node",
    title="edgeml / Node",
    node_variable=True,
    links=("edgeml-fleet", "edgeml-hub"),
    panels=(
        Panel(
            "Online",
            (q(f"edgeml_node_up{{{NODE}}}", "up"),),
            kind="stat",
            width=4,
            description="Online, last heard and model are there for every node; the other "
            "panels for the nodes with full detail (metrics.per_node_limit, by node id).",
        ),
        Panel(
            "Last heard",
            (q(f"time() - edgeml_node_last_seen_timestamp_seconds{{{NODE}}}", "seconds ago"),),
            kind="stat",
            unit="s",
            width=4,
        ),
        Panel(
            "Active model",
            (q(f"edgeml_node_info{{{NODE}}}", "{{model}}@{{version}}"),),
            kind="stat",
            width=8,
        ),
        Panel(
            "Readings/s",
            (q(f"rate(edgeml_readings_total{{{NODE}}}[{RATE}])", "readings/s"),),
            kind="stat",
            unit="reqps",
            width=4,
        ),
        Panel(
            "Seq gaps and missing readings",
            (
                q(f"edgeml_seq_gaps{{{NODE}}}", "messages never received"),
                q(f"edgeml_missing_readings{{{NODE}}}", "readings never received"),
            ),
            kind="stat",
            width=8,
        ),
        Panel(
            "Anomaly score p99",
            (q(f"edgeml_score_p99{{{NODE}}}", "score p99"),),
            description="From the node's last drift report; compare with the model's threshold.",
        ),
        Panel(
            "Flag rate",
            (
                q(
                    f"rate(edgeml_anomalous_readings_total{{{NODE}}}[{RATE}])"
                    f" / rate(edgeml_readings_total{{{NODE}}}[{RATE}])",
                    "flagged share",
                ),
            ),
            unit="percentunit",
        ),
        Panel(
            "Anomaly episodes",
            (
                q(f"increase(edgeml_events_total{{{NODE}}}[{RATE}])", "{{state}}"),
                q(
                    f'edgeml_events_total{{{NODE},state="open"}}'
                    f' - ignoring(state) edgeml_events_total{{{NODE},state="close"}}',
                    "open now",
                ),
            ),
        ),
        Panel(
            "Inference latency",
            (
                q(f'edgeml_inference_latency_seconds{{{NODE},percentile="99"}}', "p99"),
                q(f'edgeml_inference_latency_seconds{{{NODE},percentile="50"}}', "p50"),
            ),
            unit="s",
        ),
        Panel("Memory (RSS)", (q(f"edgeml_node_rss_bytes{{{NODE}}}", "rss"),), unit="bytes"),
        Panel(
            "CPU (% of one core)", (q(f"edgeml_node_cpu_percent{{{NODE}}}", "cpu"),), unit="percent"
        ),
        Panel("Power", (q(f"edgeml_node_power_watts{{{NODE}}}", "power"),), unit="watt"),
        Panel(
            "Outbox depth",
            (q(f"edgeml_outbox_depth{{{NODE}}}", "messages waiting"),),
            description="Messages kept on the node's disk until the broker has them.",
        ),
        Panel(
            "Drops and errors",
            (
                q(f"increase(edgeml_outbox_dropped_total{{{NODE}}}[{RATE}])", "outbox drops"),
                q(f"increase(edgeml_node_errors_total{{{NODE}}}[{RATE}])", "errors"),
            ),
            description="Any outbox drop is data lost: see the OutboxDropping runbook.",
        ),
        Panel(
            "Drift",
            (
                q(f"edgeml_drift_mean_shift_max_sd{{{NODE}}}", "mean shift (SD)"),
                q(f"edgeml_drift_psi_max{{{NODE}}}", "PSI"),
            ),
            width=12,
        ),
        Panel(
            "Model rollbacks since boot",
            (q(f"edgeml_model_rollbacks_total{{{NODE}}}", "rollbacks"),),
            width=12,
        ),
    ),
)

HUB = Dashboard(
    uid="edgeml-hub",
    title="edgeml / Hub health",
    links=("edgeml-fleet", "edgeml-node"),
    panels=(
        Panel("Hub up", (q('up{job="cloud-hub"}', "{{instance}}"),), kind="stat", width=4),
        Panel(
            "Ingest backlog",
            (q("edgeml_ingest_backlog", "messages waiting"),),
            kind="stat",
            width=4,
            description="Delivered by the broker, not yet applied: the hub's lag, in messages.",
        ),
        Panel(
            "Scrape duration",
            (q('scrape_duration_seconds{job="cloud-hub"}', "{{instance}}"),),
            kind="stat",
            unit="s",
            width=4,
            description="Grows with the fleet (3 health series per node) and with "
            "metrics.per_node_limit (~20 series per detailed node).",
        ),
        Panel(
            "Series per scrape",
            (q('scrape_samples_scraped{job="cloud-hub"}', "{{instance}}"),),
            kind="stat",
            width=4,
        ),
        Panel(
            "Duplicates dropped/s",
            (q(f"rate(edgeml_duplicates_total[{RATE}])", "duplicates/s"),),
            kind="stat",
            unit="reqps",
            width=8,
        ),
        Panel(
            "Ingest rate by kind",
            (q(f"sum by (kind) (rate(edgeml_messages_total[{RATE}]))", "{{kind}}"),),
            unit="reqps",
            width=12,
        ),
        Panel(
            "Rejected messages by reason",
            (
                q(
                    f"sum by (reason, type) (rate(edgeml_rejected_messages_total[{RATE}]))",
                    "{{reason}} ({{type}})",
                ),
            ),
            unit="reqps",
            width=12,
        ),
        Panel(
            "Model chunks",
            (
                q(f"rate(edgeml_chunks_published_total[{RATE}])", "published/s"),
                q("edgeml_chunks_pending", "pending"),
            ),
            width=12,
        ),
        Panel(
            "Ingest backlog over time",
            (q("edgeml_ingest_backlog", "messages waiting"),),
            width=12,
        ),
    ),
)

DASHBOARDS = (FLEET, NODE_VIEW, HUB)


def render(board: Dashboard) -> dict[str, Any]:
    """The Grafana JSON model of ``board`` (schema of Grafana 10/11)."""
    panels = []
    x = y = row_height = 0
    for number, panel in enumerate(board.panels, start=1):
        height = 4 if panel.kind == "stat" else 8
        if x + panel.width > 24:
            x, y, row_height = 0, y + row_height, 0
        panels.append(_panel(number, panel, {"h": height, "w": panel.width, "x": x, "y": y}))
        x += panel.width
        row_height = max(row_height, height)
    return {
        "uid": board.uid,
        "title": board.title,
        "tags": ["edgeml"],
        "editable": True,
        "schemaVersion": 39,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "timezone": "browser",
        "links": [{"type": "dashboards", "tags": ["edgeml"], "asDropdown": True, "title": "edgeml"}]
        if board.links
        else [],
        "templating": {"list": [_node_variable()] if board.node_variable else []},
        "panels": panels,
    }


def _panel(number: int, panel: Panel, pos: dict[str, int]) -> dict[str, Any]:
    return {
        "id": number,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": pos,
        "fieldConfig": {"defaults": {"unit": panel.unit}, "overrides": []},
        "options": {"legend": {"displayMode": "list", "placement": "bottom", "showLegend": True}},
        "targets": [
            {
                "refId": chr(ord("A") + i),
                "datasource": DATASOURCE,
                "expr": query.expr,
                "legendFormat": query.legend or "__auto",
            }
            for i, query in enumerate(panel.queries)
        ],
    }


def _node_variable() -> dict[str, Any]:
    query = "label_values(edgeml_node_up, node)"
    return {
        "name": "node",
        "label": "Node",
        "type": "query",
        "datasource": DATASOURCE,
        "query": {"query": query, "refId": "node"},
        "definition": query,
        "refresh": 2,  # on time-range change: new nodes appear without a reload
        "sort": 1,
        "includeAll": False,
        "multi": False,
    }


def panel_rows() -> list[str]:
    """One Markdown table row per query: dashboard, panel, PromQL (deploy/README.md lists them)."""
    rows = ["| dashboard | panel | query |", "|---|---|---|"]
    for board in DASHBOARDS:
        for panel in board.panels:
            for query in panel.queries:
                expr = query.expr.replace("|", "\\|")
                rows.append(f"| {board.title.split(' / ')[1]} | {panel.title} | `{expr}` |")
    return rows


def files() -> dict[Path, str]:
    """Each dashboard's file and its text."""
    return {
        OUT / f"{board.uid}.json": json.dumps(render(board), indent=2, sort_keys=True) + "\n"
        for board in DASHBOARDS
    }


def main(argv: list[str] | None = None) -> int:
    """Write the dashboards, or with ``--check`` report those that differ."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if the JSON is out of date")
    parser.add_argument(
        "--list", action="store_true", help="print each panel and its queries (Markdown rows)"
    )
    args = parser.parse_args(argv)
    if args.list:
        print("\n".join(panel_rows()))
        return 0
    stale = [p for p, text in files().items() if not p.is_file() or p.read_text() != text]
    if args.check:
        for path in stale:
            print(f"{path}: out of date; run python deploy/grafana/generate.py", file=sys.stderr)
        return 1 if stale else 0
    OUT.mkdir(exist_ok=True)
    for path, text in files().items():
        path.write_text(text, encoding="utf-8")
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
