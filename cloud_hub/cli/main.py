"""The ``cloud-hub`` command line.

``serve`` and ``nodes`` live here; ``train`` in :mod:`cloud_hub.cli.training`; the catalog
and ledger tables (``models``, ``register``, ``commands``) in :mod:`cloud_hub.cli.models`; the
commands sent to nodes (``deploy``, ``rollback``, ``ping``, ``retrain``) in
:mod:`cloud_hub.cli.commands`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from cloud_hub.app import StartupError, serve
from cloud_hub.cli import commands, events, models, training
from cloud_hub.cli.args import UsageError, positive
from cloud_hub.cli.session import load_config
from cloud_hub.commands.commander import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from cloud_hub.commands.ledger import LedgerError
from cloud_hub.config import IngestConfig
from cloud_hub.ingest.events_store import EventStoreError
from cloud_hub.ingest.registry import NodeRow, Registry, RegistryError
from cloud_hub.ingest.transport import TransportError
from cloud_hub.models.catalog import CatalogError
from schemas.settings import SettingsError

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_CLEAR = "\x1b[H\x1b[2J"


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, set up logging, run the subcommand; return the exit code."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format=LOG_FORMAT)
    try:
        code: int = args.run(args)
    except (SettingsError, UsageError) as exc:
        return _fail(args.command, exc, EXIT_USAGE)
    except (
        RegistryError,
        EventStoreError,
        StartupError,
        CatalogError,
        LedgerError,
        TransportError,
        OSError,
    ) as exc:
        return _fail(args.command, exc, EXIT_FAILED)
    return code


def _fail(command: str, error: Exception, code: int) -> int:
    """One line on stderr, no traceback: these are the user's to fix, not bugs."""
    print(f"cloud-hub {command}: {error}", file=sys.stderr)
    return code


def _common(log_level: str, *, with_config: bool, with_timeout: bool) -> argparse.ArgumentParser:
    """Options shared by a group of subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        default=log_level,
        type=str.upper,
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help=f"logging level (default {log_level})",
    )
    if with_config:
        common.add_argument(
            "--config", type=Path, help="TOML settings file (CLOUD_HUB__* variables override it)"
        )
    if with_timeout:
        common.add_argument(
            "--timeout",
            type=positive,
            default=commands.DEFAULT_TIMEOUT_S,
            metavar="S",
            help=f"wait at most S seconds for answers (default {commands.DEFAULT_TIMEOUT_S:g})",
        )
    return common


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand."""
    common = _common("INFO", with_config=False, with_timeout=False)
    parser = argparse.ArgumentParser(
        prog="cloud-hub", description="Fleet hub of the edgeml pipeline."
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", parents=[common], help="run the hub")
    serve.add_argument("--config", type=Path, help="TOML settings file")
    serve.set_defaults(run=_serve)

    nodes = sub.add_parser("nodes", parents=[common], help="show the fleet registry")
    where = nodes.add_mutually_exclusive_group()
    where.add_argument("--config", type=Path, help="TOML settings file (for store.db)")
    where.add_argument("--db", type=Path, help="registry file (default: from the settings)")
    nodes.add_argument("--watch", type=positive, metavar="SECONDS", help="refresh every SECONDS")
    nodes.set_defaults(run=_nodes)

    training.add_parser(sub, common)
    events.add_parser(sub, _common("WARNING", with_config=False, with_timeout=False))

    # Client commands print results; they log only when something is wrong.
    models.add_parsers(sub, _common("WARNING", with_config=True, with_timeout=False))
    commands.add_parsers(sub, _common("WARNING", with_config=True, with_timeout=True))
    return parser


def _serve(args: argparse.Namespace) -> int:
    return serve(load_config(args.config))


def _nodes(args: argparse.Namespace) -> int:
    if args.db is not None:
        db, offline_after = args.db, IngestConfig().offline_after_s
    else:
        config = load_config(args.config)
        db, offline_after = Path(config.store.db), config.ingest.offline_after_s
    registry = Registry(db, readonly=True)
    try:
        while True:
            table = format_nodes(registry.nodes(), time.time(), offline_after)
            if args.watch is None:
                print(table)
                return EXIT_OK
            print((_CLEAR if sys.stdout.isatty() else "") + table, flush=True)
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        registry.close()


def format_nodes(rows: Sequence[NodeRow], now: float, offline_after_s: float) -> str:
    """The ``nodes`` table: one line per node, columns aligned."""
    header = (
        "NODE",
        "STATE",
        "LAST SEEN",
        "MODEL",
        "READINGS",
        "ANOMALIES",
        "P99 MS",
        "OUTBOX",
        "PSI MAX",
    )
    lines = [header] + [_cells(r, now, offline_after_s) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )
    return text if rows else text + "\n(no nodes yet)"


def _cells(row: NodeRow, now: float, offline_after_s: float) -> tuple[str, ...]:
    recent = row.last_seen is not None and now - row.last_seen <= offline_after_s
    online = row.online is not False and recent
    model = f"{row.active_model}@{row.active_version}" if row.active_model else "-"
    return (
        row.node,
        "online" if online else "offline",
        ago(now - row.last_seen) if row.last_seen is not None else "never",
        model,
        str(row.readings),
        str(row.anomalies),
        _num(row.latency_p99_ms, ".2f"),
        _num(row.outbox_depth, "d"),
        _num(row.drift_psi_max, ".3f"),
    )


def ago(seconds: float) -> str:
    """``42s ago``, ``5m ago``, ``3h ago``, ``2d ago``."""
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)
