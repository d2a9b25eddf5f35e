"""``cloud-hub rollout start | status | pause | resume | abort``.

``start`` checks fit, plans the waves and writes the rollout into the hub's rollout store,
then returns; ``cloud-hub serve`` drives it (and a restarted serve resumes it). The other
subcommands read the store or leave a request in it for serve to take.
"""

from __future__ import annotations

import argparse
import re
import secrets
import time
from collections.abc import Sequence
from typing import Any

from cloud_hub.cli.args import UsageError, model_name, model_version, node_id
from cloud_hub.cli.fit import catalog_entry, node_capabilities
from cloud_hub.cli.session import _user, load_config
from cloud_hub.commands.commander import EXIT_FAILED, EXIT_OK
from cloud_hub.commands.fit import NodeFit, fit_table
from cloud_hub.rollouts.plan import DEFAULT_WAVES, PlanError, parse_waves, plan_waves, select_group
from cloud_hub.rollouts.state import ACTIVE, Rollout
from cloud_hub.rollouts.store import RolloutStore

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"^(\d+(?:\.\d+)?)([smhd]?)$")


def duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``2h``, ``1d`` as seconds (> 0)."""
    match = _DURATION.match(text.strip())
    if match is None or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"a duration such as 90s, 10m or 2h, got {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``rollout`` and its subcommands to ``sub``."""
    rollout = sub.add_parser("rollout", help="roll a model out in waves, gated on its behaviour")
    actions = rollout.add_subparsers(dest="action", required=True)
    start = actions.add_parser("start", parents=[common], help="plan a rollout for serve to run")
    start.add_argument("--model", required=True, type=model_name, help="model name")
    start.add_argument("--version", required=True, type=model_version, help="model version")
    where = start.add_mutually_exclusive_group(required=True)
    where.add_argument("--node", type=node_id, action="append", help="target node (repeatable)")
    where.add_argument("--all", action="store_true", help="every node in the fleet registry")
    where.add_argument(
        "--group",
        metavar="G",
        help="nodes whose id matches the glob G (pump-*): nodes announce no group yet",
    )
    start.add_argument(
        "--waves",
        default=DEFAULT_WAVES,
        help="cumulative nodes per wave, counts or shares (default "
        f"{DEFAULT_WAVES.replace('%', '%%')}); the last wave takes every node left",
    )
    start.add_argument(
        "--bake",
        type=duration,
        metavar="DURATION",
        help="how long each wave runs before the gate judges it (default: rollout.bake_s)",
    )
    start.add_argument(
        "--shadow",
        type=duration,
        metavar="DURATION",
        help="first run the model beside the active one on the first wave's nodes for "
        "DURATION and gate on the two arms",
    )
    start.set_defaults(run=run_start)
    status = actions.add_parser("status", parents=[common], help="rollouts, or one in detail")
    status.add_argument("id", nargs="?", help="rollout id (default: list them)")
    status.set_defaults(run=run_status)
    for name, text in (
        ("pause", "send nothing new until resumed"),
        ("resume", "go on with a paused rollout"),
        ("abort", "stop and roll back the nodes already switched"),
    ):
        parser = actions.add_parser(name, parents=[common], help=text)
        parser.add_argument("id", help="rollout id")
        parser.set_defaults(run=run_request)


def run_start(args: argparse.Namespace) -> int:
    """``rollout start``: fit, plan, store; print the plan and the fit table."""
    config = load_config(args.config)
    entry = catalog_entry(config, args.model, args.version)
    try:
        specs = parse_waves(args.waves)
    except PlanError as exc:
        raise UsageError(f"--waves: {exc}") from None
    known = node_capabilities(config)
    chosen = _chosen(args, known)
    table = fit_table({n: known.get(n) for n in chosen}, entry.manifest.needs)
    fitting = [r.node for r in table if not r.reasons]
    if not fitting:
        print(format_fit_out(table) or "no node selected")
        print("nothing to roll out")
        return EXIT_FAILED
    now = time.time()
    rollout = Rollout.new(
        secrets.token_hex(4),
        args.model,
        args.version,
        plan_waves(fitting, specs),
        now=now,
        created_by=f"cloud-hub rollout start ({_user()})",
        bake_s=args.bake or config.rollout.bake_s,
        shadow_s=args.shadow or 0.0,
    )
    store = RolloutStore(config.store.rollouts_path())
    try:
        store.create(rollout)
    finally:
        store.close()
    print(format_plan(rollout))
    misfits = format_fit_out(table)
    if misfits:
        print(misfits)
    print(f"cloud-hub serve runs it; follow it with: cloud-hub rollout status {rollout.id}")
    return EXIT_OK


def _chosen(args: argparse.Namespace, known: dict[str, Any]) -> list[str]:
    if args.node:
        return sorted(dict.fromkeys(args.node))
    if args.all:
        nodes = sorted(known)
        if not nodes:
            raise UsageError("--all: the fleet registry has no nodes yet (is serve running?)")
        return nodes
    nodes = select_group(known, args.group)
    if not nodes:
        raise UsageError(f"--group {args.group}: no node in the fleet registry matches")
    return nodes


def format_plan(rollout: Rollout) -> str:
    """The waves and their nodes, the bake and shadow times."""
    lines = [f"rollout {rollout.id}: {rollout.ref} to {len(rollout.nodes)} nodes"]
    if rollout.shadow_s > 0:
        lines.append(f"  shadow  {rollout.shadow_s:g} s on the first wave's nodes, then gate")
    total = 0
    for index, wave in enumerate(rollout.waves):
        total += len(wave)
        lines.append(f"  wave {index + 1}  +{len(wave)} (={total})  {', '.join(wave)}")
    lines.append(f"  bake {rollout.bake_s:g} s per wave, then the gate")
    return "\n".join(lines)


def format_fit_out(table: Sequence[NodeFit]) -> str:
    """The nodes left out because the model does not fit them, with every reason."""
    out = [f"  {r.node}  {r.alone}" for r in table if r.reasons]
    return "\n".join(["left out (the model does not fit):", *out]) if out else ""


def run_status(args: argparse.Namespace) -> int:
    """``rollout status [ID]``."""
    config = load_config(args.config)
    store = RolloutStore(config.store.rollouts_path())
    try:
        if args.id is None:
            rollouts = [store.load(i) for i in store.ids()]
            print(format_list([r for r in rollouts if r is not None]))
            return EXIT_OK
        rollout = store.load(args.id)
    finally:
        store.close()
    if rollout is None:
        raise UsageError(f"no rollout {args.id} in {config.store.rollouts_path()}")
    print(format_status(rollout, time.time()))
    return EXIT_OK


def format_list(rollouts: Sequence[Rollout]) -> str:
    """One line per rollout."""
    if not rollouts:
        return "no rollouts"
    lines = ["ID        MODEL               STATE     PHASE     WAVE  UPDATED"]
    for r in rollouts:
        wave = f"{min(r.wave + 1, len(r.waves))}/{len(r.waves)}"
        lines.append(
            f"{r.id:<9} {r.ref:<19} {r.state:<9} {r.phase:<9} {wave:<5} "
            f"{r.updated()}/{len(r.nodes)}"
        )
    return "\n".join(lines)


def format_status(rollout: Rollout, now: float) -> str:
    """A rollout in detail: its state, each wave's nodes with their step, the decisions."""
    wave = f"wave {min(rollout.wave + 1, len(rollout.waves))}/{len(rollout.waves)}"
    lines = [
        f"rollout {rollout.id}: {rollout.ref}  {rollout.state}  {rollout.phase}  {wave}  "
        f"{rollout.updated()}/{len(rollout.nodes)} nodes on it",
        f"  created {_ago(now - rollout.created_at)} by {rollout.created_by}",
    ]
    if rollout.reason:
        lines.append(f"  reason: {rollout.reason}")
    for index, names in enumerate(rollout.waves):
        lines.append(f"  wave {index + 1}:")
        for name in names:
            run = rollout.nodes[name]
            reason = f"  {run.reason}" if run.reason else ""
            was = f"  (was {run.previous})" if run.previous else ""
            lines.append(f"    {name:<16} {run.step:<14}{was}{reason}")
    if rollout.decisions:
        lines.append("  decisions:")
        for d in rollout.decisions:
            at = time.strftime("%H:%M:%S", time.localtime(d.at))
            lines.append(f"    {at}  wave {d.wave + 1}  {d.kind:<7} {d.summary}")
    return "\n".join(lines)


def run_request(args: argparse.Namespace) -> int:
    """``rollout pause | resume | abort ID``: a request serve takes at its next tick."""
    config = load_config(args.config)
    store = RolloutStore(config.store.rollouts_path())
    try:
        rollout = store.load(args.id)
        if rollout is None:
            raise UsageError(f"no rollout {args.id} in {store.path}")
        if rollout.state not in ACTIVE:
            print(f"rollout {args.id} is {rollout.state} already: nothing to {args.action}")
            return EXIT_FAILED
        store.request(args.id, args.action, time.time(), f"cloud-hub rollout ({_user()})")
    finally:
        store.close()
    print(f"rollout {args.id}: {args.action} requested; cloud-hub serve takes it within a second")
    return EXIT_OK


def _ago(seconds: float) -> str:
    seconds = max(0.0, seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{int(seconds)}s ago"
