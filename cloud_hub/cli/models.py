"""``cloud-hub models | register | commands``: the catalog and the ledger as tables."""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import msgspec

from cloud_hub.cli.args import UsageError, node_id, positive_int
from cloud_hub.cli.cards import format_card
from cloud_hub.cli.session import load_config
from cloud_hub.commands.commander import EXIT_OK
from cloud_hub.commands.ledger import CommandHistory, Ledger
from cloud_hub.models.catalog import Catalog, CatalogEntry, Reference
from schemas.readings_csv import read_csv

JSON_HELP = "print a JSON array instead of the table (times as Unix seconds)"


def to_json(value: object) -> str:
    """``value`` (dataclasses, Structs, lists) as indented JSON."""
    return msgspec.json.format(msgspec.json.encode(value), indent=2).decode()


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the catalog and ledger subcommands to ``sub``."""
    models = sub.add_parser("models", parents=[common], help="show the model catalog")
    models.add_argument(
        "--card", metavar="NAME@VERSION", help="show this model's card instead of the table"
    )
    models.add_argument("--json", action="store_true", help=JSON_HELP)
    models.set_defaults(run=run_models)

    register = sub.add_parser(
        "register", parents=[common], help="add a trained model folder to the catalog"
    )
    register.add_argument("dir", type=Path, metavar="DIR", help="folder with model.onnx")
    register.add_argument(
        "--reference",
        type=Path,
        metavar="CSV",
        help="healthy readings the model stands for, kept beside it (the retrain loop checks "
        "that a candidate flags no more of them)",
    )
    register.set_defaults(run=run_register)

    commands = sub.add_parser("commands", parents=[common], help="show the command ledger")
    commands.add_argument("--node", type=node_id, help="only this node's commands")
    commands.add_argument("--limit", type=positive_int, default=50, help="default 50")
    commands.add_argument("--json", action="store_true", help=JSON_HELP)
    commands.set_defaults(run=run_commands)


def run_models(args: argparse.Namespace) -> int:
    """``cloud-hub models``."""
    catalog = Catalog(load_config(args.config).store.models_path())
    try:
        if args.card is not None:
            entry = _entry(catalog, args.card)
            card = entry.manifest.card
            print(to_json(card) if args.json else format_card(entry.manifest))
            return EXIT_OK
        entries = catalog.list()
        if args.json:
            # The manifest is the model folder's own file; its card and the table's columns here.
            print(to_json([_summary(e) for e in entries]))
        else:
            print(format_models(entries))
    finally:
        catalog.close()
    return EXIT_OK


def _entry(catalog: Catalog, ref: str) -> CatalogEntry:
    name, _, version = ref.partition("@")
    entry = catalog.get(name, version)
    if entry is None:
        known = ", ".join(e.ref for e in catalog.list()) or "none"
        raise UsageError(f"{ref} is not in the catalog (it has: {known})")
    return entry


def _summary(entry: CatalogEntry) -> dict[str, object]:
    row: dict[str, object] = {k: v for k, v in asdict(entry).items() if k != "manifest"}
    row["card"] = msgspec.to_builtins(entry.manifest.card)
    return row


def run_register(args: argparse.Namespace) -> int:
    """``cloud-hub register DIR``."""
    config = load_config(args.config)
    if not args.dir.is_dir():
        raise UsageError(f"{args.dir} is not a folder")
    ref = register_folder(config.store.models_path(), args.dir, time.time())
    print(ref)
    if args.reference is not None:
        print(f"reference  {keep_reference(config.store.models_path(), ref, args.reference)}")
    return EXIT_OK


def keep_reference(models_dir: Path, ref: str, path: Path) -> str:
    """Keep the readings of CSV ``path`` as the healthy reference of ``ref``; a summary."""
    try:
        data = read_csv(path)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    name, version = ref.split("@", 1)
    catalog = Catalog(models_dir)
    try:
        entry = catalog.get(name, version)
        if entry is not None and entry.channels != data.channels:
            raise UsageError(f"{path}: channels {data.channels} differ from {entry.channels}")
        period = data.period(str(path)) if len(data.values) > 1 else 0.0
        catalog.keep_reference(name, version, Reference(data.channels, period, data.values))
    finally:
        catalog.close()
    return f"{len(data.values)} readings of {path.name}"


def register_folder(models_dir: Path, folder: Path, now: float) -> str:
    """Register ``folder`` in the catalog at ``models_dir``; return ``name@version``."""
    catalog = Catalog(models_dir)
    try:
        return catalog.register(folder, now).ref
    finally:
        catalog.close()


def run_commands(args: argparse.Namespace) -> int:
    """``cloud-hub commands``."""
    ledger = Ledger(load_config(args.config).store.ledger_path())
    try:
        history = ledger.commands(args.node, args.limit)
        print(to_json(history) if args.json else format_commands(history, time.time()))
    finally:
        ledger.close()
    return EXIT_OK


def format_models(entries: Sequence[CatalogEntry]) -> str:
    """The ``models`` table."""
    header = (
        "MODEL",
        "VERSION",
        "ALGORITHM",
        "SIZE",
        "CHANNELS",
        "THRESHOLD",
        "VALIDATION",
        "US/READING",
        "CREATED",
        "BY",
    )
    rows = [
        (
            e.name,
            e.version,
            e.algorithm,
            str(e.size),
            str(len(e.channels)),
            f"{e.threshold:.4g}",
            _validation(e),
            f"{e.manifest.card.latency_us_per_reading:.3g}" if e.manifest.card else "-",
            _time(e.created_at),
            e.trained_by,
        )
        for e in entries
    ]
    return _table(header, rows, "(no models: cloud-hub register DIR adds one)")


def _validation(entry: CatalogEntry) -> str:
    card = entry.manifest.card
    if card is None or card.validation is None:
        return "-"
    return f"F1 {card.validation.f1:.3f} FAR {card.validation.far:.1%}"


def format_commands(history: Sequence[CommandHistory], now: float) -> str:
    """The ``commands`` table: newest first, each with its last status and reason; a command
    nobody answered is ``sent`` until it expires at ``now``, then ``expired``."""
    header = ("TIME", "ID", "TYPE", "NODE", "MODEL", "STATUS", "REASON")
    rows = []
    for h in history:
        c, last = h.command, h.last
        model = last.model if last is not None and last.model is not None else c.model
        rows.append(
            (
                _time(c.issued_at),
                c.id,
                c.type,
                c.node,
                f"{model.name}@{model.version}" if model is not None else "-",
                last.status if last is not None else ("expired" if c.expires_at < now else "sent"),
                last.reason if last is not None else "",
            )
        )
    return _table(header, rows, "(no commands yet)")


def _table(header: tuple[str, ...], rows: Sequence[tuple[str, ...]], empty: str) -> str:
    lines = [header, *rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )
    return text if rows else f"{text}\n{empty}"


def _time(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))
