"""The folder tree is the architecture: these are the rules it keeps (read from the source)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("edge_node", "cloud_hub", "schemas")


def _modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


def _imports(path: Path) -> set[str]:
    """Top-level names of every module ``path`` imports, at any depth of the file."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def _importers(package: str, prefix: str) -> list[str]:
    return [
        str(path.relative_to(ROOT))
        for path in _modules(package)
        if any(name == prefix or name.startswith(prefix + ".") for name in _imports(path))
    ]


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("cloud_hub", "edge_node"),
        ("edge_node", "cloud_hub"),
        ("schemas", "edge_node"),
        ("schemas", "cloud_hub"),
    ],
)
def test_processes_share_only_the_contract(package: str, forbidden: str) -> None:
    assert _importers(package, forbidden) == []


@pytest.mark.parametrize(
    ("package", "library", "owner"),
    [
        ("edge_node", "paho", "edge_node/delivery/transport.py"),
        ("edge_node", "onnxruntime", "edge_node/scoring/runtime.py"),
        ("edge_node", "pymodbus", "edge_node/sources/modbus.py"),
        ("edge_node", "asyncua", "edge_node/sources/opcua.py"),
        ("cloud_hub", "paho", "cloud_hub/ingest/transport.py"),
        ("cloud_hub", "prometheus_client", "cloud_hub/ingest/metrics.py"),
        ("cloud_hub", "psycopg", "cloud_hub/store/postgres.py"),
    ],
)
def test_one_adapter_per_outside_system(package: str, library: str, owner: str) -> None:
    assert _importers(package, library) == [owner]


@pytest.mark.parametrize(
    "folder",
    sorted(p.parent for package in PACKAGES for p in (ROOT / package).rglob("__init__.py")),
    ids=lambda p: str(p.relative_to(ROOT)),
)
def test_every_package_says_in_one_line_what_lives_there(folder: Path) -> None:
    doc = ast.get_docstring(ast.parse((folder / "__init__.py").read_text(encoding="utf-8")))
    assert doc, f"{folder.relative_to(ROOT)}/__init__.py has no docstring"
    assert "\n" not in doc.strip()
