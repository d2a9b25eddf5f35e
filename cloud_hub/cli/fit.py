"""``cloud-hub fit``: does a model fit the nodes, alone or beside another, and which is cheapest.

The nodes' capabilities come from their last birth (the fleet registry), the model's needs from
its manifest in the catalog.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from cloud_hub.cli.args import UsageError, model_name, model_version, node_id
from cloud_hub.cli.models import JSON_HELP, to_json
from cloud_hub.cli.session import load_config
from cloud_hub.commands.commander import EXIT_FAILED, EXIT_OK
from cloud_hub.commands.fit import NodeFit, capabilities_of, cheapest, fit_table
from cloud_hub.config import HubConfig
from cloud_hub.models.catalog import Catalog, CatalogEntry
from cloud_hub.store.base import StoreError, open_reader
from schemas.messages import Capabilities


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``fit`` to ``sub``."""
    fit = sub.add_parser("fit", parents=[common], help="check a model against the nodes")
    fit.add_argument("--model", required=True, type=model_name, help="model name")
    fit.add_argument("--version", required=True, type=model_version, help="model version")
    where = fit.add_mutually_exclusive_group()
    where.add_argument("--node", type=node_id, action="append", default=[], help="repeatable")
    where.add_argument("--all", action="store_true", help="every node in the registry (default)")
    fit.add_argument(
        "--with",
        dest="other",
        metavar="MODEL:VERSION",
        help="a model that must run beside it (memory and power add up)",
    )
    fit.add_argument("--cheapest", action="store_true", help="name the cheapest node that fits")
    fit.add_argument("--json", action="store_true", help=JSON_HELP)
    fit.set_defaults(run=run_fit)


def run_fit(args: argparse.Namespace) -> int:
    """``cloud-hub fit``."""
    config = load_config(args.config)
    entry = catalog_entry(config, args.model, args.version)
    other = None
    if args.other is not None:
        name, sep, version = args.other.partition(":")
        if not sep:
            raise UsageError(f"--with takes MODEL:VERSION, got {args.other!r}")
        other = catalog_entry(config, name, version)
    known = node_capabilities(config)
    nodes = {n: known.get(n) for n in args.node} if args.node else known
    table = fit_table(nodes, entry.manifest.needs, other.manifest.needs if other else None)
    best = cheapest(table) if args.cheapest else None
    if args.json:
        print(to_json({"nodes": [asdict(r) for r in table], "cheapest": best and best.node}))
    else:
        print(format_fit(table, entry.ref, other.ref if other else None))
        if args.cheapest:
            print(f"cheapest that fits: {best.node}" if best else "no node fits")
    return EXIT_FAILED if args.cheapest and best is None else EXIT_OK


def format_fit(table: Sequence[NodeFit], model: str, other: str | None) -> str:
    """One line per node: ``edge-a  CHECK memory,power``, and more columns with ``--with``."""
    header = ("NODE", model) if other is None else ("NODE", model, other, "TOGETHER")
    rows = [
        (r.node, r.alone) if other is None else (r.node, r.alone, r.other or "-", r.together or "-")
        for r in table
    ]
    lines = [header, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )
    return text if rows else text + "\n(no nodes in the registry yet)"


def node_capabilities(config: HubConfig) -> dict[str, Capabilities | None]:
    """Each registered node's capabilities from its last birth (None before one)."""
    try:
        registry = open_reader(config.store.url, Path(config.store.db))
    except StoreError:
        return {}
    try:
        return {row.node: capabilities_of(row.capabilities) for row in registry.nodes()}
    finally:
        registry.close()


def catalog_entry(
    config: HubConfig, name: str, version: str, *, read_artifact: bool = False
) -> CatalogEntry:
    """The catalog entry, or a UsageError naming the catalog; with ``read_artifact`` its file is
    read once too, so that a damaged one stops a deploy before anything is sent."""
    catalog = Catalog(config.store.models_path())
    try:
        entry = catalog.get(name, version)
        if entry is None:
            raise UsageError(
                f"{name}@{version} is not in the catalog at {catalog.root}; "
                "add it with: cloud-hub register DIR"
            )
        if read_artifact:
            catalog.artifact(name, version)
        return entry
    finally:
        catalog.close()
