"""``cloud-hub shadow start | stop | status``: run a candidate model beside a node's active one.

``start`` signs and sends a ``Shadow`` command like ``deploy`` sends a deploy (``serve`` must run
to publish the candidate's chunks) and waits until the node says the run started (``applied``).
The run then reports on its own; ``serve`` keeps each node's newest report in the registry, and
``status`` shows it: the two arms side by side, their agreement, the candidate's CPU share and
the run's state. ``stop`` ends a run early.
"""

from __future__ import annotations

import argparse
import math
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec

from cloud_hub.cli.args import UsageError, model_name, model_version, node_id
from cloud_hub.cli.commands import present
from cloud_hub.cli.fit import catalog_entry
from cloud_hub.cli.models import to_json
from cloud_hub.cli.session import Session, load_config
from cloud_hub.commands.commander import (
    DEFAULT_EXPIRES_IN_S,
    EXIT_FAILED,
    EXIT_OK,
    Issue,
    Tracker,
    build_shadow,
    build_stop_shadow,
    new_command_id,
)
from cloud_hub.store.base import StoreError, open_reader
from schemas import behaviour
from schemas.commands import DEFAULT_CHUNK_SIZE
from schemas.messages import ArmFigures, Command, ShadowReport
from schemas.topics import ROOT, Kind

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
MAX_DURATION_S = 7 * 86400.0  # the contract's bound on Shadow.duration_s


def duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``2h``, ``1d`` -> seconds (up to 7 days)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match is None:
        raise argparse.ArgumentTypeError(f"{text!r} is not a duration such as 90s, 30m or 2h")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if not 0 < seconds <= MAX_DURATION_S:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and 7 days")
    return seconds


def budget(text: str) -> float:
    """A share of one core, above 0 and at most 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a share of a core in (0, 1]")
    return value


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``shadow`` and its actions to ``sub`` (``common``: --config, --timeout, logging)."""
    shadow = sub.add_parser("shadow", help="run a candidate model beside a node's active one")
    actions = shadow.add_subparsers(dest="action", required=True)
    start = actions.add_parser("start", parents=[common], help="start a shadow run")
    _add_nodes(start)
    start.add_argument("--model", required=True, type=model_name, help="candidate model name")
    start.add_argument("--version", required=True, type=model_version, help="its version")
    start.add_argument(
        "--duration", required=True, type=duration, metavar="D", help="e.g. 90s, 30m, 2h"
    )
    start.add_argument(
        "--cpu-budget",
        type=budget,
        default=0.25,
        metavar="F",
        help="share of one core the candidate may take before the run ends (default 0.25)",
    )
    start.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK_SIZE, metavar="B")
    _add_sending(start)
    start.set_defaults(run=run_start)
    stop = actions.add_parser("stop", parents=[common], help="end a node's shadow run")
    _add_nodes(stop)
    _add_sending(stop)
    stop.set_defaults(run=run_stop)
    status = actions.add_parser("status", parents=[common], help="show the shadow runs")
    status.add_argument("--node", action="append", type=node_id, default=[], help="repeatable")
    status.add_argument("--json", action="store_true", help="JSON instead of the table")
    status.set_defaults(run=run_status)


def _add_nodes(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--node", action="append", required=True, type=node_id, help="target node (repeatable)"
    )


def _add_sending(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--expires-in", type=float, default=DEFAULT_EXPIRES_IN_S, metavar="S",
        help=f"nodes ignore the command after S seconds (default {DEFAULT_EXPIRES_IN_S:g})",
    )  # fmt: skip
    parser.add_argument("--queue", action="store_true", help="send to offline or unknown nodes too")


def run_start(args: argparse.Namespace) -> int:
    """``cloud-hub shadow start``: exit 0 when every node started its run."""
    if args.chunk_size < 1:
        raise UsageError(f"--chunk-size must be >= 1, got {args.chunk_size}")
    config = load_config(args.config)
    entry = catalog_entry(config, args.model, args.version, read_artifact=True)
    nodes = list(dict.fromkeys(args.node))
    with Session(config, "shadow start") as session:
        if not present(session, nodes, args):
            return EXIT_FAILED
        session.listen(nodes, [Kind.ACK], [f"{ROOT}/models/{entry.name}/{entry.version}/+"])
        issue = Issue(session.identity, session.clock(), args.expires_in)
        commands: list[Command] = [
            build_shadow(
                issue,
                node,
                manifest=entry.manifest,
                size=entry.size,
                chunk_size=args.chunk_size,
                command_id=new_command_id(),
                duration_s=args.duration,
                cpu_budget=args.cpu_budget,
            )
            for node in nodes
        ]
        code = _run(session, commands, args.timeout)
        session.print_report(
            [f"{c.node}  shadow {c.id} for {args.duration:g} s" for c in commands]
            + ["the nodes report every drift interval: cloud-hub shadow status"]
        )
        return code


def run_stop(args: argparse.Namespace) -> int:
    """``cloud-hub shadow stop``: exit 0 when every node ended its run."""
    nodes = list(dict.fromkeys(args.node))
    with Session(load_config(args.config), "shadow stop") as session:
        if not present(session, nodes, args):
            return EXIT_FAILED
        session.listen(nodes, [Kind.ACK])
        issue = Issue(session.identity, session.clock(), args.expires_in)
        commands: list[Command] = [
            build_stop_shadow(issue, node, new_command_id()) for node in nodes
        ]
        return _run(session, commands, args.timeout)


def _run(session: Session, commands: list[Command], timeout: float) -> int:
    tracker = Tracker(commands, session.clock(), timeout)
    session.send(commands)
    session.follow(tracker)
    session.print_report(tracker.report())
    return tracker.exit_code()


def run_status(args: argparse.Namespace) -> int:
    """``cloud-hub shadow status``: the newest report of each node's shadow run."""
    config = load_config(args.config)
    try:
        registry = open_reader(config.store.url, Path(config.store.db))
        try:
            reports = registry.load_shadows()
        finally:
            registry.close()
    except StoreError as exc:
        print(f"cannot read the shadow runs: {exc}")
        return EXIT_FAILED
    wanted = (
        [reports[n] for n in args.node if n in reports] if args.node else list(reports.values())
    )
    missing = [n for n in args.node if n not in reports]
    if args.json:
        print(to_json([status_json(r) for r in wanted]))
    else:
        print(format_all(wanted) or "no shadow runs reported yet")
    for node in missing:
        print(f"{node}: no shadow run reported")
    return EXIT_FAILED if missing else EXIT_OK


def status_json(report: ShadowReport) -> dict[str, Any]:
    """One node's run as JSON-ready builtins (NaN, a figure of no readings, as null)."""
    out: dict[str, Any] = msgspec.to_builtins(report)
    out["distance"] = _distance(report)
    for key in ("v", "boot", "seq"):
        out.pop(key, None)
    cleaned: dict[str, Any] = _nulls(out)
    return cleaned


def _nulls(value: Any) -> Any:
    """NaN (a statistic of no readings) as None, all the way down."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nulls(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nulls(v) for v in value]
    return value


def _distance(report: ShadowReport) -> float:
    a, b = report.active.score_counts, report.candidate.score_counts
    if len(a) != behaviour.BINS or len(b) != behaviour.BINS:
        return math.nan
    return behaviour.distance(a, b)


def format_status(report: ShadowReport) -> str:
    """One node's run: a heading line, then the two arms side by side."""
    a, c = report.active, report.candidate
    minutes = max(report.end - report.start, 0.0) / 60.0
    head = (
        f"{report.node}  shadow {report.command}  {report.state}"
        f"  since {_utc(report.start)}  ({minutes:.1f} min)"
        f"  agreement {_num(report.agreement, '.3f')}  CPU share {_pct(report.cpu_share)}"
    )
    if report.reason:
        head += f"\n  {report.reason}"
    names = (
        f"active {a.model.name}@{a.model.version}",
        f"candidate {c.model.name}@{c.model.version}",
    )
    rows: list[tuple[str, str, str]] = [
        ("", *names),
        ("readings", str(a.readings), str(c.readings)),
        ("flag rate", _rate(a), _rate(c)),
        ("unscored", str(a.unscored), str(c.unscored)),
        ("episodes", str(a.episodes), str(c.episodes)),
        ("score p50", _num(a.score_p50, ".4g"), _num(c.score_p50, ".4g")),
        ("score p99", _num(a.score_p99, ".4g"), _num(c.score_p99, ".4g")),
        ("threshold", _num(a.threshold, ".4g"), _num(c.threshold, ".4g")),
        ("distance", "", _num(_distance(report), ".3f")),
        ("latency p99 ms", _num(a.latency_p99_ms, ".3f"), _num(c.latency_p99_ms, ".3f")),
    ]  # fmt: skip
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = [f"  {r[0]:<{w0}}  {r[1]:<{w1}}  {r[2]}".rstrip() for r in rows]
    return "\n".join([head, *lines])


def _rate(arm: ArmFigures) -> str:
    scored = arm.readings - arm.unscored
    return _pct(arm.flagged / scored) if scored > 0 else "-"


def _pct(value: float) -> str:
    return "-" if not math.isfinite(value) else f"{value * 100:.2f} %"


def _num(value: float, spec: str) -> str:
    return "-" if not math.isfinite(value) else format(value, spec)


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def format_all(reports: Sequence[ShadowReport]) -> str:
    """Every node's run, blank line between them."""
    return "\n\n".join(format_status(r) for r in reports)
