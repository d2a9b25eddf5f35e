"""``cloud-hub deploy | rollback | ping | retrain``: send a command, wait for the acks, report.

Each exits 0 only when every target node applied its command, 1 when any failed, was rejected
or did not answer in time, 2 for a usage or settings error.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cloud_hub.cli.args import (
    model_name,
    model_version,
    node_id,
    non_negative,
    positive,
    positive_int,
)
from cloud_hub.cli.cards import format_side_by_side
from cloud_hub.cli.fit import catalog_entry, node_capabilities
from cloud_hub.cli.session import Session, load_config
from cloud_hub.commands.capture_wait import CaptureWait, sample_rate
from cloud_hub.commands.commander import (
    DEFAULT_EXPIRES_IN_S,
    DEFAULT_SETTLE_S,
    EXIT_FAILED,
    EXIT_OK,
    Issue,
    Tracker,
    build_deploy,
    build_ping,
    build_retrain,
    build_rollback,
    new_command_id,
)
from cloud_hub.commands.fit import fit_table
from cloud_hub.commands.presence import absent
from cloud_hub.config import HubConfig
from cloud_hub.models.captures import CaptureAssembly, CaptureData, CaptureError
from cloud_hub.models.catalog import Catalog, CatalogEntry
from cloud_hub.store.base import HubStore, StoreError, open_reader
from schemas.commands import DEFAULT_CHUNK_SIZE
from schemas.manifest import Manifest
from schemas.messages import Capture, Command
from schemas.topics import ROOT, Kind

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 120.0


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add the command subcommands to ``sub`` (``common``: --config, --timeout, logging)."""
    deploy = sub.add_parser("deploy", parents=[common], help="deploy a catalog model to nodes")
    deploy.add_argument("--model", required=True, type=model_name, help="model name")
    deploy.add_argument("--version", required=True, type=model_version, help="model version")
    _add_nodes(deploy)
    _add_expiry(deploy)
    _add_queue(deploy)
    _add_deploy_options(deploy)
    deploy.add_argument(
        "--force",
        action="store_true",
        help="send to nodes the fit check refuses (recorded in the ledger)",
    )
    deploy.set_defaults(run=run_deploy)

    for name, text in (
        ("rollback", "go one step back in the node's model history"),
        ("ping", "ask for status"),
    ):
        parser = sub.add_parser(name, parents=[common], help=text)
        _add_nodes(parser)
        _add_expiry(parser)
        _add_queue(parser)
        parser.set_defaults(run=run_simple)
        if name == "rollback":
            parser.add_argument(
                "--to",
                type=model_version,
                metavar="VERSION",
                help="go to this version of the node's model (still installed on it) instead",
            )

    retrain = sub.add_parser(
        "retrain", parents=[common], help="capture readings on a node and train a new version"
    )
    retrain.add_argument("--node", required=True, type=node_id, help="node to capture on")
    retrain.add_argument("--readings", required=True, type=positive_int, metavar="R")
    retrain.add_argument("--mode", choices=["next", "last"], default="next")
    retrain.add_argument("--name", type=model_name, help="model name (default: the node's)")
    retrain.add_argument("--deploy", action="store_true", help="deploy the new version to it")
    _add_expiry(retrain)
    _add_queue(retrain)
    _add_deploy_options(retrain)
    retrain.set_defaults(run=run_retrain)


def _add_queue(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--queue",
        action="store_true",
        help="send to nodes that are offline or unknown too: the broker keeps the command for "
        "them until it expires (default: refuse at once, naming them)",
    )


def _add_nodes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--node", action="append", required=True, type=node_id, help="target node (repeatable)"
    )


def _add_expiry(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--expires-in",
        type=positive,
        default=DEFAULT_EXPIRES_IN_S,
        metavar="S",
        help=f"nodes ignore the command after S seconds (default {DEFAULT_EXPIRES_IN_S:g})",
    )


def _add_deploy_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--chunk-size",
        type=positive_int,
        default=DEFAULT_CHUNK_SIZE,
        metavar="B",
        help=f"bytes per model chunk (default {DEFAULT_CHUNK_SIZE})",
    )
    parser.add_argument(
        "--settle",
        type=non_negative,
        default=DEFAULT_SETTLE_S,
        metavar="S",
        help="after every node applied, listen S seconds more for a rollback on probation "
        f"(default {DEFAULT_SETTLE_S:g})",
    )


def run_deploy(args: argparse.Namespace) -> int:
    """``cloud-hub deploy``: refused for nodes the model does not fit, unless ``--force``."""
    config = load_config(args.config)
    entry = catalog_entry(config, args.model, args.version, read_artifact=True)
    nodes = _unique(args.node)
    known = node_capabilities(config)
    misfits = [
        r for r in fit_table({n: known.get(n) for n in nodes}, entry.manifest.needs) if r.reasons
    ]
    if misfits and not args.force:
        for row in misfits:
            print(f"{row.node}  refused   does not fit this node: {row.alone}")
        print("nothing sent; --force sends it anyway (each node still checks on its own side)")
        return EXIT_FAILED
    with Session(config, "deploy") as session:
        if not present(session, nodes, args):
            return EXIT_FAILED
        if misfits:
            forced = ", ".join(f"{r.node} {r.alone}" for r in misfits)
            session.issued_by += f" --force over {forced}"
        return deploy(session, entry, nodes, args)


def deploy(session: Session, entry: CatalogEntry, nodes: list[str], args: Any) -> int:
    """Send ``entry`` to ``nodes`` over an open session and wait for their answers."""
    session.listen(nodes, [Kind.ACK], [f"{ROOT}/models/{entry.name}/{entry.version}/+"])
    issue = Issue(session.identity, session.clock(), args.expires_in)
    commands: list[Command] = [
        build_deploy(
            issue,
            node,
            manifest=entry.manifest,
            size=entry.size,
            chunk_size=args.chunk_size,
            command_id=new_command_id(),
        )
        for node in nodes
    ]
    return _run(session, commands, args.timeout, args.settle)


def run_simple(args: argparse.Namespace) -> int:
    """``cloud-hub rollback`` and ``cloud-hub ping``."""
    nodes = _unique(args.node)
    with Session(load_config(args.config), args.command) as session:
        if not present(session, nodes, args):
            return EXIT_FAILED
        session.listen(nodes, [Kind.ACK])
        issue = Issue(session.identity, session.clock(), args.expires_in)
        commands: list[Command] = [
            build_rollback(issue, node, new_command_id(), getattr(args, "to", None))
            if args.command == "rollback"
            else build_ping(issue, node, new_command_id())
            for node in nodes
        ]
        return _run(session, commands, args.timeout)


def present(session: Session, nodes: Sequence[str], args: Any) -> bool:
    """True when every node is online (or ``--queue`` was given); else says who is not."""
    if args.queue:
        return True
    missing = absent(nodes, session.statuses(nodes))
    for node, why in missing.items():
        session.print_report([f"{node}  refused   {why}"])
    if missing:
        session.print_report(["nothing sent; --queue sends anyway (it waits until it expires)"])
    return not missing


def _run(session: Session, commands: list[Command], timeout: float, settle: float = 0.0) -> int:
    tracker = Tracker(commands, session.clock(), timeout, settle)
    session.send(commands)
    session.follow(tracker)
    session.print_report(tracker.report())
    return tracker.exit_code()


def run_retrain(args: argparse.Namespace) -> int:
    """``cloud-hub retrain``: capture on the node, train, register, optionally deploy."""
    config = load_config(args.config)
    with Session(config, "retrain") as session:
        if not present(session, [args.node], args):
            return EXIT_FAILED
        return retrain(session, config, args)


def retrain(session: Session, config: HubConfig, args: Any) -> int:
    """Capture on ``args.node`` over an open session, train and register; maybe deploy."""
    data, tracker = _capture(session, args, _sample_rate(session, config, args.node))
    if data is None:
        session.print_report(tracker.report())
        return EXIT_FAILED
    session.print_report([_captured_line(args.node, data, session.clock() - tracker.started)])
    active_name, active_version = _active_model(config, args.node, tracker)
    name = args.name or active_name
    if name is None:
        session.print_report([f"{args.node}: cannot tell which model to retrain: pass --name"])
        return EXIT_FAILED
    try:
        entry, current = _train_and_register(
            config, data, name, active_version if name == active_name else None, session.clock()
        )
    except ValueError as exc:
        session.print_report([f"cannot train {name} on the capture: {exc}"])
        return EXIT_FAILED
    session.print_report([format_side_by_side(current, entry.manifest), f"registered {entry.ref}"])
    if not args.deploy:
        return EXIT_OK
    return deploy(session, entry, [args.node], args)


def _capture(session: Session, args: Any, rate: float | None) -> tuple[CaptureData | None, Tracker]:
    """Send the retrain command and collect its capture chunks; the wait follows the capture
    (its expected duration at ``rate`` readings/s, plus ``--timeout``, longer while chunks come)."""
    session.listen([args.node], [Kind.ACK, Kind.CAPTURE])
    mode: Literal["next", "last"] = args.mode
    issue = Issue(session.identity, session.clock(), args.expires_in)
    command = build_retrain(
        issue, args.node, readings=args.readings, mode=mode, command_id=new_command_id()
    )
    assembly = CaptureAssembly(command.id, args.node)
    now = session.clock()
    wait = CaptureWait.start(now, args.readings, mode, rate, args.timeout)
    tracker = Tracker([command], now, wait.deadline - now)

    def on_capture(chunk: Capture, now: float) -> None:
        if chunk.command != command.id or chunk.node != args.node:
            return
        try:
            assembly.add(chunk)
        except CaptureError as exc:
            log.warning("%s", exc)
            return
        wait.on_chunk(now)

    def until(now: float) -> bool:
        state = tracker.nodes[args.node].state
        return assembly.complete or state in ("rejected", "failed") or wait.expired(now)

    def describe() -> str:
        progress = tracker.nodes[args.node]
        return wait.progress(session.clock(), progress.accepted_at, assembly.readings)

    session.on_capture = on_capture
    session.send([command])
    session.follow(tracker, until, describe)
    if not assembly.complete:
        progress = tracker.nodes[args.node]
        tracker.timeout = wait.deadline - wait.started
        if progress.state not in ("rejected", "failed"):
            progress.state = "timeout"
            progress.reason = (
                f"capture incomplete: {_chunks_text(assembly)} arrived; if it arrives later, "
                f"train from it with: cloud-hub train --capture {command.id}"
            )
        return None, tracker
    return assembly.assemble(), tracker


def _sample_rate(session: Session, config: HubConfig, node: str) -> float | None:
    """The node's announced sample rate: from the fleet registry, else its retained birth."""
    rate = sample_rate(node_capabilities(config).get(node))
    if rate is None:
        status = session.statuses([node]).get(node)
        rate = sample_rate(status.capabilities if status is not None else None)
    return rate


def _chunks_text(assembly: CaptureAssembly) -> str:
    total = "?" if assembly.chunks is None else str(assembly.chunks)
    return f"{assembly.received}/{total} chunks"


def _captured_line(node: str, data: CaptureData, elapsed: float) -> str:
    rows, cols = data.values.shape
    return f"{node}  captured  {rows} readings of {cols} channels   {elapsed:.2f} s"


def _active_model(config: HubConfig, node: str, tracker: Tracker) -> tuple[str | None, str | None]:
    """The node's active model (name, version): from the fleet registry, else from its ack."""
    registry: HubStore | None
    try:
        registry = open_reader(config.store.url, Path(config.store.db))
    except StoreError:
        registry = None
    if registry is not None:
        try:
            rows = {r.node: r for r in registry.nodes()}
        finally:
            registry.close()
        if node in rows and rows[node].active_model:
            return rows[node].active_model, rows[node].active_version
    model = tracker.nodes[node].model
    return (model.name, model.version) if model is not None else (None, None)


def _train_and_register(
    config: HubConfig, data: CaptureData, name: str, current: str | None, now: float
) -> tuple[CatalogEntry, Manifest | None]:
    """Train ``name`` at its next version on the capture and register it (ValueError: data);
    also the manifest of version ``current`` (else the newest one) to compare it with."""
    from cloud_hub.models.onnx_export import train_model
    from cloud_hub.models.trainer import DEFAULTS

    values = data.values[np.isfinite(data.values).all(axis=1)]
    if len(values) < len(data.values):
        log.warning("dropped %d readings with missing values", len(data.values) - len(values))
    catalog = Catalog(config.store.models_path())
    try:
        before = (catalog.get(name, current) if current else None) or catalog.latest(name)
        version = catalog.next_version(name)
        onnx_bytes, manifest = train_model(
            values,
            data.channels,
            name=name,
            version=version,
            trained_by=f"retrain {data.command} on {data.node}",
            config=DEFAULTS["pca"],
            now=now,
            sources=[f"capture {data.command} from {data.node}"],
        )
        entry = catalog.add(onnx_bytes, manifest, now, source=f"retrain {data.command}")
        return entry, before.manifest if before is not None else None
    finally:
        catalog.close()


def _unique(nodes: Sequence[str]) -> list[str]:
    return list(dict.fromkeys(nodes))
