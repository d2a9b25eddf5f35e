"""``cloud-hub approvals | approve | reject``: candidates of the retrain loop and decisions on them.

The loop (in ``serve``) registers a candidate only when it passed its comparison; with
``approval = "manual"`` it then waits here. ``approve`` lets serve promote it at its next
round; ``reject`` discards it. ``approvals --all`` lists every run with its stage.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from typing import Any

from cloud_hub.cli.args import UsageError
from cloud_hub.cli.session import load_config
from cloud_hub.commands.commander import EXIT_FAILED, EXIT_OK
from cloud_hub.retraining.policy import Work
from cloud_hub.retraining.store import LoopStore
from cloud_hub.retraining.wiring import store_path


def add_parsers(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``approvals``, ``approve`` and ``reject`` to ``sub``."""
    approvals = sub.add_parser(
        "approvals", parents=[common], help="candidates of the retrain loop awaiting approval"
    )
    approvals.add_argument("--all", action="store_true", help="every run, whatever its stage")
    approvals.add_argument("--steps", metavar="ID", help="the history of one run, step by step")
    approvals.set_defaults(run=run_approvals)
    approve = sub.add_parser("approve", parents=[common], help="promote a waiting candidate")
    approve.add_argument("id", metavar="ID", help="run id (cloud-hub approvals)")
    approve.set_defaults(run=run_decide, approve=True, reason="")
    reject = sub.add_parser("reject", parents=[common], help="discard a waiting candidate")
    reject.add_argument("id", metavar="ID", help="run id (cloud-hub approvals)")
    reject.add_argument("--reason", default="", help="why (kept with the run)")
    reject.set_defaults(run=run_decide, approve=False)


def run_approvals(args: argparse.Namespace) -> int:
    """``cloud-hub approvals``."""
    store = LoopStore(store_path(load_config(args.config)))
    try:
        if args.steps:
            if store.run(args.steps) is None:
                raise UsageError(f"no retrain run {args.steps}")
            print(format_steps(store, args.steps))
            return EXIT_OK
        runs = (
            store.runs(200)
            if args.all
            else [w for w in store.open_runs() if w.stage == "awaiting_approval"]
        )
        print(format_runs(runs, time.time()))
    finally:
        store.close()
    return EXIT_OK


def format_steps(store: LoopStore, work_id: str) -> str:
    """A run's steps, oldest first, each with the figures known by then."""
    lines = []
    for s in store.steps(work_id):
        lines.append(f"{_utc(s.ts)}  {s.step:<17}  {s.detail}")
        if s.figures:
            lines.append("    " + "  ".join(f"{k}={v:.4g}" for k, v in sorted(s.figures.items())))
    return "\n".join(lines)


def format_runs(runs: list[Work], now: float) -> str:
    """One line per run: id, node, models, FAR held back and on reference, drift, age."""
    header = ("ID", "NODE", "STAGE", "MODEL", "FAR HELD BACK", "FAR REFERENCE", "AGE", "DRIFT")
    rows = [header] + [_row(w, now) for w in runs]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = [
        "  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]]) for r in rows
    ]
    if not runs:
        lines.append("(none)")
    return "\n".join(line.rstrip() for line in lines)


def _row(w: Work, now: float) -> tuple[str, ...]:
    f = w.figures
    model = f"{w.model}@{w.current_version}"
    if w.candidate_version:
        model += f" -> {w.candidate_version}"
    return (
        w.id,
        w.node,
        w.stage,
        model,
        _pair(f, "held_back"),
        _pair(f, "reference"),
        _age(now - w.started_at),
        w.drift_reason or "-",
    )


def _pair(figures: dict[str, float], part: str) -> str:
    current, candidate = figures.get(f"far_current_{part}"), figures.get(f"far_candidate_{part}")
    if current is None or candidate is None:
        return "-"
    return f"{current:.2%} -> {candidate:.2%}"


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ts))


def run_decide(args: argparse.Namespace) -> int:
    """``cloud-hub approve ID`` and ``cloud-hub reject ID [--reason]``."""
    store = LoopStore(store_path(load_config(args.config)))
    try:
        work = store.run(args.id)
        if work is None:
            raise UsageError(f"no retrain run {args.id} (cloud-hub approvals lists them)")
        if work.stage != "awaiting_approval":
            print(f"{work.id}: not awaiting approval (stage {work.stage}{_note(work)})")
            return EXIT_FAILED
        who = os.environ.get("USER") or "unknown"
        now = time.time()
        if args.approve:
            moved = replace(work, stage="approved", updated_at=now)
            detail = f"approved by {who}"
        else:
            reason = args.reason or "no reason given"
            moved = replace(work, stage="discarded", updated_at=now, note=f"rejected: {reason}")
            detail = f"rejected by {who}: {reason}"
        if not store.advance(work.stage, moved, moved.stage, detail):
            print(f"{work.id}: changed meanwhile; see cloud-hub approvals --all")
            return EXIT_FAILED
    finally:
        store.close()
    candidate = f"{work.model}@{work.candidate_version}"
    print(f"{work.id}  {moved.stage}  {candidate} for {work.node}  ({detail})")
    return EXIT_OK


def _note(work: Work) -> str:
    return f": {work.note}" if work.note else ""
