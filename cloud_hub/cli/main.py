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
from dataclasses import asdict
from pathlib import Path

import msgspec

from cloud_hub.app import StartupError, serve
from cloud_hub.cli import approvals, commands, events, fit, models, rollout, shadow, training
from cloud_hub.cli.args import UsageError, positive
from cloud_hub.cli.session import load_config, settings_source
from cloud_hub.commands import keys
from cloud_hub.commands.commander import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from cloud_hub.commands.ledger import LedgerError
from cloud_hub.config import IngestConfig
from cloud_hub.ingest.events_store import EventStoreError
from cloud_hub.ingest.registry import NodeRow, Registry, RegistryError
from cloud_hub.ingest.transport import TransportError
from cloud_hub.models.catalog import CatalogError
from cloud_hub.retraining.store import LoopStoreError
from cloud_hub.rollouts.store import RolloutStoreError
from cloud_hub.store.base import HubStore, StoreError, open_reader
from schemas.settings import SettingsError

log = logging.getLogger(__name__)

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
_CLEAR = "\x1b[H\x1b[2J"
LOG_LEVELS = ["DEBUG", "INFO", "WARNING", "ERROR"]


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv``, set up logging, run the subcommand; return the exit code."""
    args = build_parser().parse_args(argv)
    level = args.log_level or args.global_log_level or args.default_log_level
    logging.basicConfig(level=level, format=LOG_FORMAT)
    try:
        code: int = args.run(args)
    except (SettingsError, UsageError) as exc:
        return _fail(args.command, exc, EXIT_USAGE)
    except TransportError as exc:
        # "cannot reach 127.0.0.1:1883" is often the wrong settings, not the wrong broker.
        return _fail(args.command, f"{exc} (settings: {_settings_note(args)})", EXIT_FAILED)
    except (
        StoreError,  # RegistryError (SQLite) too
        EventStoreError,
        StartupError,
        CatalogError,
        LedgerError,
        LoopStoreError,
        RolloutStoreError,
        keys.SigningKeyError,
        OSError,
    ) as exc:
        return _fail(args.command, exc, EXIT_FAILED)
    return code


def _settings_note(args: argparse.Namespace) -> str:
    try:
        return settings_source(getattr(args, "config", None)).how
    except SettingsError as exc:
        return str(exc)


def _fail(command: str, error: Exception | str, code: int) -> int:
    """One line on stderr, no traceback: these are the user's to fix, not bugs."""
    print(f"cloud-hub {command}: {error}", file=sys.stderr)
    return code


def _common(log_level: str, *, with_config: bool, with_timeout: bool) -> argparse.ArgumentParser:
    """Options shared by a group of subcommands."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--log-level",
        default=None,
        type=str.upper,
        choices=LOG_LEVELS,
        help=f"logging level (default {log_level})",
    )
    common.set_defaults(default_log_level=log_level)
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
    # Also before the subcommand, as edge-node accepts it; one given after the subcommand wins.
    parser.add_argument(
        "--log-level",
        dest="global_log_level",
        type=str.upper,
        choices=LOG_LEVELS,
        help="logging level (default: INFO for serve and train, WARNING for client commands)",
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
    nodes.add_argument(
        "--stale-after",
        type=positive,
        metavar="S",
        help="if the hub has written nothing for S seconds, show states as unknown "
        "(default: ingest.offline_after_s)",
    )
    nodes.add_argument(
        "--json",
        action="store_true",
        help="a JSON array instead of the table (with --watch: one array per line)",
    )
    nodes.set_defaults(run=_nodes)

    training.add_parser(sub, common)
    events.add_parser(sub, _common("WARNING", with_config=False, with_timeout=False))
    keygen = sub.add_parser(
        "keygen", parents=[common], help="make the hub's command-signing key (Ed25519)"
    )
    keygen.add_argument("--out", type=Path, required=True, metavar="FILE", help="private key")
    keygen.set_defaults(run=_keygen)

    # Client commands print results; they log only when something is wrong.
    models.add_parsers(sub, _common("WARNING", with_config=True, with_timeout=False))
    commands.add_parsers(sub, _common("WARNING", with_config=True, with_timeout=True))
    fit.add_parser(sub, _common("WARNING", with_config=True, with_timeout=False))
    approvals.add_parsers(sub, _common("WARNING", with_config=True, with_timeout=False))
    shadow.add_parser(sub, _common("WARNING", with_config=True, with_timeout=True))
    rollout.add_parser(sub, _common("WARNING", with_config=True, with_timeout=False))
    return parser


def _keygen(args: argparse.Namespace) -> int:
    text = keys.generate(args.out)
    print(f"private key {args.out} (mode 0600), public key {keys.public_path(args.out)}")
    print(f'nodes: [security] hub_keys = ["{text}"]')
    print(f'hub:   [security] signing_key = "{args.out}"')
    return 0


def _serve(args: argparse.Namespace) -> int:
    return serve(load_config(args.config))


def _nodes(args: argparse.Namespace) -> int:
    if args.db is not None:
        db, offline_after = args.db, IngestConfig().offline_after_s
    else:
        config = load_config(args.config)
        db, offline_after = Path(config.store.db), config.ingest.offline_after_s
    stale_after = args.stale_after or offline_after
    url = "" if args.db is not None else config.store.url
    registry: HubStore = (
        open_reader(url, Path(db))
        if args.watch is None or url
        else _registry_when_ready(Path(db), args.watch)
    )
    try:
        while True:
            now = time.time()
            rows = registry.nodes()
            if args.json:
                print(nodes_json(rows, now, offline_after, stale_after, pretty=args.watch is None))
            else:
                clear = _CLEAR if args.watch is not None and sys.stdout.isatty() else ""
                header = nodes_header(rows, now, stale_after)
                print(f"{clear}{header}\n{format_nodes(rows, now, offline_after, stale_after)}")
            if args.watch is None:
                return EXIT_OK
            sys.stdout.flush()
            time.sleep(args.watch)
    except KeyboardInterrupt:
        return EXIT_OK
    finally:
        registry.close()


def _registry_when_ready(db: Path, every: float) -> Registry:
    """``nodes --watch`` started before ``serve``: wait for the registry rather than fail."""
    said = False
    while True:
        registry: Registry | None = None
        try:
            registry = Registry(db, readonly=True)
            registry.nodes()
            return registry
        except RegistryError as exc:
            if registry is not None:
                registry.close()
            if not said:
                print(f"waiting for the fleet registry (cloud-hub serve makes it): {exc}")
                said = True
            time.sleep(every)


def hub_silent(rows: Sequence[NodeRow], now: float, stale_after_s: float) -> bool:
    """True when the hub has written no row for ``stale_after_s``: its states may be stale."""
    return bool(rows) and now - max(r.updated_at for r in rows) > stale_after_s


def nodes_header(rows: Sequence[NodeRow], now: float, stale_after_s: float) -> str:
    """The line above the table: the time now, and when the hub last wrote the registry."""
    clock = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now))
    if not rows:
        return clock
    written = ago(now - max(r.updated_at for r in rows))
    if hub_silent(rows, now, stale_after_s):
        return f"{clock}  hub last wrote {written}: is cloud-hub serve running? states unknown"
    return f"{clock}  hub last wrote {written}"


def nodes_json(
    rows: Sequence[NodeRow],
    now: float,
    offline_after_s: float,
    stale_after_s: float | None = None,
    *,
    pretty: bool = True,
) -> str:
    """The registry rows as JSON, each with the ``state`` the table shows."""
    silent = stale_after_s is not None and hub_silent(rows, now, stale_after_s)
    items = [{**asdict(r), "state": _state(r, now, offline_after_s, silent)} for r in rows]
    data = msgspec.json.encode(items)
    return (msgspec.json.format(data, indent=2) if pretty else data).decode()


def _state(row: NodeRow, now: float, offline_after_s: float, silent: bool = False) -> str:
    recent = row.last_seen is not None and now - row.last_seen <= offline_after_s
    if row.online is not False and recent:
        # Online by the hub's last word, but the hub has gone quiet: nobody knows any more.
        return "unknown" if silent else "online"
    return "offline"


def format_nodes(
    rows: Sequence[NodeRow], now: float, offline_after_s: float, stale_after_s: float | None = None
) -> str:
    """The ``nodes`` table: one line per node, columns aligned.

    With ``stale_after_s``, nodes the hub last saw online show as ``unknown`` when the hub has
    written nothing for that long (it is probably not running).
    """
    silent = stale_after_s is not None and hub_silent(rows, now, stale_after_s)
    header = (
        "NODE",
        "STATE",
        "LAST SEEN",
        "MODEL",
        "READINGS",
        "ANOMALIES",
        "P99 MS",
        "OUTBOX",
        "DRIFT",
    )
    lines = [header] + [_cells(r, now, offline_after_s, silent) for r in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )
    return text if rows else text + "\n(no nodes yet)"


def _cells(row: NodeRow, now: float, offline_after_s: float, silent: bool) -> tuple[str, ...]:
    model = f"{row.active_model}@{row.active_version}" if row.active_model else "-"
    return (
        row.node,
        _state(row, now, offline_after_s, silent),
        ago(now - row.last_seen) if row.last_seen is not None else "never",
        model,
        str(row.readings),
        str(row.anomalies),
        _num(row.latency_p99_ms, ".2f"),
        _num(row.outbox_depth, "d"),
        row.drift or "-",
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
