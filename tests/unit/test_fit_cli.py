"""``cloud-hub fit`` and the deploy refusal, on a registry and a catalog on disk (no broker)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import msgspec
import pytest

from cloud_hub.cli import session as session_module
from cloud_hub.cli.main import main
from cloud_hub.ingest.fleet import NodeState
from cloud_hub.ingest.registry import Registry
from cloud_hub.models.catalog import Catalog
from schemas.fit import Needs
from schemas.samples import MANIFEST
from tests.unit.test_fit import EDGE_A, EDGE_B, EDGE_C


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The seed fleet in the registry and two models in the catalog: 700 MB and 350 MB."""
    monkeypatch.delenv("CLOUD_HUB_CONFIG", raising=False)
    monkeypatch.setattr(session_module, "SYSTEM_CONFIG", tmp_path / "no-hub.toml")
    db = tmp_path / "hub" / "hub.db"
    monkeypatch.setenv("CLOUD_HUB__STORE__DB", str(db))
    registry = Registry(db)
    prices = {"edge-a": 40.0, "edge-b": 90.0, "edge-c": 150.0}
    states = []
    for name, caps in (("edge-a", EDGE_A), ("edge-b", EDGE_B), ("edge-c", EDGE_C)):
        states.append(
            NodeState(node=name, capabilities=msgspec.structs.replace(caps, price=prices[name]))
        )
    registry.upsert_many(states, 1.0)
    registry.close()
    catalog = Catalog(db.parent / "models")
    for version, memory in (("1", 700.0), ("2", 350.0)):
        data = f"model {version}".encode()
        manifest = msgspec.structs.replace(
            MANIFEST,
            version=version,
            sha256=hashlib.sha256(data).hexdigest(),
            needs=Needs(memory_mb=memory, power_w=10.0, offline=True),
        )
        catalog.add(data, manifest, 1.0, source="test")
    catalog.close()
    return db


def test_fit_prints_every_reason_per_node(hub: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", "--model", "pump-pca", "--version", "1", "--all"]) == 0
    lines = capsys.readouterr().out.split("\n")
    assert [line.split(None, 1) for line in lines[1:4]] == [
        ["edge-a", "CHECK memory,power"],
        ["edge-b", "CHECK offline"],
        ["edge-c", "FIT"],
    ]
    assert main(["fit", "--model", "pump-pca", "--version", "2", "--node", "edge-a"]) == 0
    assert capsys.readouterr().out.split("\n")[1].split(None, 1) == ["edge-a", "CHECK power"]


def test_cheapest_and_models_together(hub: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fit", "--model", "pump-pca", "--version", "2", "--cheapest", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cheapest"] == "edge-c"  # edge-a is cheaper but has no power for it
    argv = ["fit", "--model", "pump-pca", "--version", "1", "--with", "pump-pca:2"]
    assert main([*argv, "--node", "edge-c"]) == 0
    header, row = capsys.readouterr().out.split("\n")[:2]
    assert header.split() == ["NODE", "pump-pca@1", "pump-pca@2", "TOGETHER"]
    assert row.split() == ["edge-c", "FIT", "FIT", "FIT"]
    assert main([*argv, "--node", "edge-a", "--cheapest"]) == 1  # nothing fits


def test_deploy_refuses_a_node_the_model_does_not_fit(
    hub: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [
        "deploy",
        "--model",
        "pump-pca",
        "--version",
        "1",
        "--node",
        "edge-a",
        "--node",
        "edge-c",
    ]
    assert main(argv) == 1
    out = capsys.readouterr().out
    assert "edge-a  refused   does not fit this node: CHECK memory,power" in out
    assert "nothing sent" in out and "edge-c" not in out
