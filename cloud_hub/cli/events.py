"""``cloud-hub events``: the episodes nodes reported, from the hub's event store.

    cloud-hub events [--node N] [--since T] [--open] [--json] [--limit K]

``--since`` takes a duration back from now (``90s``, ``15m``, ``2h``, ``7d``), a unix time or
an ISO 8601 time (UTC unless it says otherwise). The table shows start and end (UTC), kind
(machine anomaly or sensor fault), severity, peak score and the channels that drove it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec

from cloud_hub.cli.args import UsageError
from cloud_hub.cli.session import load_config
from cloud_hub.commands.commander import EXIT_OK
from cloud_hub.ingest.events_store import EpisodeRow, EventStore

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def add_parser(sub: Any, common: argparse.ArgumentParser) -> None:
    """Add ``events`` to the subcommands."""
    events = sub.add_parser("events", parents=[common], help="list anomaly and sensor episodes")
    where = events.add_mutually_exclusive_group()
    where.add_argument("--config", type=Path, help="TOML settings file (for store.events_db)")
    where.add_argument("--db", type=Path, help="events file (default: from the settings)")
    events.add_argument("--node", help="only this node's episodes")
    events.add_argument("--since", help="active since: 2h, 30m, a unix time or an ISO time")
    events.add_argument("--open", action="store_true", help="only episodes still open")
    events.add_argument("--json", action="store_true", help="one JSON object per line")
    events.add_argument("--limit", type=int, default=200, help="at most this many (newest)")
    events.set_defaults(run=run_events)


def run_events(args: argparse.Namespace) -> int:
    """List the episodes the options select."""
    path = args.db if args.db is not None else load_config(args.config).store.events_path()
    since = parse_since(args.since, time.time()) if args.since else None
    if args.limit < 1:
        raise UsageError(f"--limit must be >= 1, got {args.limit}")
    store = EventStore(path, readonly=True)
    try:
        rows = store.query(node=args.node, since=since, open_only=args.open, limit=args.limit)
    finally:
        store.close()
    if args.json:
        for row in rows:
            print(msgspec.json.encode(row).decode())
    else:
        print(format_events(rows))
    return EXIT_OK


def parse_since(text: str, now: float) -> float:
    """A unix time from ``2h`` (ago), ``1700000000`` or ``2026-11-30T21:00``; UsageError."""
    text = text.strip()
    unit = _UNITS.get(text[-1:].lower())
    try:
        if unit is not None:
            return now - float(text[:-1]) * unit
        return float(text)
    except ValueError:
        pass
    try:
        when = dt.datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(
            f"--since {text!r}: expected a duration (90s, 15m, 2h, 7d), a unix time or an ISO time"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return when.timestamp()


def format_events(rows: Sequence[EpisodeRow]) -> str:
    """The ``events`` table, newest first, columns aligned."""
    header = ("NODE", "KIND", "STARTED (UTC)", "ENDED", "SEVERITY", "PEAK", "CHANNELS", "MODEL")
    lines = [header, *(_cells(r) for r in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )
    return text if rows else text + "\n(no episodes)"


def _cells(row: EpisodeRow) -> tuple[str, ...]:
    if row.kind == "sensor":
        channels = f"{row.channel} ({row.fault})"
        peak = "-"
    else:
        channels = ", ".join(f"{c.channel} {c.share:.0%}" for c in row.channels) or "-"
        peak = (
            f"{row.peak_score:.3g} (x{row.peak_score / row.threshold:.1f})"
            if row.threshold > 0
            else f"{row.peak_score:.3g}"
        )
    ended = "open" if row.ended is None else _clock(row.ended, row.started)
    return (
        row.node, row.kind, _stamp(row.started), ended, row.severity, peak, channels,
        f"{row.model}@{row.version}",
    )  # fmt: skip


def _stamp(t: float) -> str:
    return dt.datetime.fromtimestamp(t, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


def _clock(t: float, started: float) -> str:
    """The end time, with the episode's length."""
    length = max(0.0, t - started)
    text = f"{length:.0f}s" if length < 120 else f"{length / 60:.0f}m"
    return f"{dt.datetime.fromtimestamp(t, dt.UTC).strftime('%H:%M:%S')} ({text})"
