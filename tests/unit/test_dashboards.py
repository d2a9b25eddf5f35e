"""The Grafana dashboards are generated from deploy/grafana/generate.py and agree with the stack.

That every query returns data from a real hub is tests/integration/test_observability.py.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
GRAFANA = REPO / "deploy" / "grafana"


def _generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("grafana_generate", GRAFANA / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def _boards() -> dict[str, dict[str, Any]]:
    return {
        p.stem: json.loads(p.read_text(encoding="utf-8"))
        for p in sorted((GRAFANA / "dashboards").glob("*.json"))
    }


def test_committed_json_is_what_the_generator_writes(capsys: pytest.CaptureFixture[str]) -> None:
    assert _generator().main(["--check"]) == 0, capsys.readouterr().err


def test_panels_use_the_provisioned_data_source() -> None:
    provisioned = (GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text()
    uid = re.search(r"^\s+uid: (\S+)$", provisioned, re.M)
    assert uid is not None
    for name, board in _boards().items():
        for panel in board["panels"]:
            assert panel["datasource"]["uid"] == uid.group(1), (name, panel["title"])
            assert panel["targets"], (name, panel["title"])


def test_the_three_views_exist_and_the_node_view_follows_its_variable() -> None:
    boards = _boards()
    assert set(boards) == {"edgeml-fleet", "edgeml-node", "edgeml-hub"}
    variables = boards["edgeml-node"]["templating"]["list"]
    assert [v["name"] for v in variables] == ["node"]
    for panel in boards["edgeml-node"]["panels"]:
        for target in panel["targets"]:
            assert 'node="$node"' in target["expr"], panel["title"]


def test_panels_do_not_overlap() -> None:
    for name, board in _boards().items():
        cells: set[tuple[int, int]] = set()
        for panel in board["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] + pos["w"] <= 24, (name, panel["title"])
            mine = {
                (x, y)
                for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])
            }
            assert not cells & mine, (name, panel["title"])
            cells |= mine


def test_every_metric_a_panel_names_is_one_the_hub_exposes() -> None:
    source = "".join(
        (REPO / "cloud_hub" / "ingest" / name).read_text(encoding="utf-8")
        for name in ("metrics.py", "fleet_series.py", "change_series.py")
    )
    exposed = set(re.findall(r'"(edgeml_[a-z0-9_]+)"', source))
    # Prometheus adds _total to counters; scrape_* and up are Prometheus's own series.
    for board in _boards().values():
        for panel in board["panels"]:
            for target in panel["targets"]:
                for metric in re.findall(r"\b(edgeml_[a-z0-9_]+)", target["expr"]):
                    name = metric.removesuffix("_total").removesuffix("_bucket")  # histograms
                    assert name in exposed, (panel["title"], metric)


def test_deploy_readme_lists_every_panel_query() -> None:
    readme = (REPO / "deploy" / "README.md").read_text(encoding="utf-8")
    missing = [row for row in _generator().panel_rows() if row not in readme.splitlines()]
    assert not missing, "deploy/README.md: paste `generate.py --list`:\n" + "\n".join(missing)
