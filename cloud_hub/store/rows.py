"""The rows both stores keep per node: the readable registry row (``nodes``), the part of a
node's snapshot that changes with nearly every message (``node_live``) and its telemetry
(``node_health``); pure, no I/O.

A node's snapshot is stored in three parts. ``node_state`` holds the whole of it as
MessagePack (cloud_hub.ingest.snapshot): status, capabilities, model, telemetry and drift
summaries, the reading coverage of every boot. It is rewritten only when the node's profile
changes (a status or drift report, a model switch, a new boot: see ``Ingest.take_profiles``),
with the registry row. ``node_live`` holds what a result batch or an event changes (last
seen, counters, threshold, the coverage of the node's newest boot) as plain columns, written
with every change of the node; ``node_health`` the telemetry summary and what the node's
counters grew by, written when a telemetry report changed them (``Ingest.take_healths``) and
with the whole snapshot. Read back, both overlay the older copies in ``node_state`` and in
the registry row. Rows are kept narrow because a commit of messages from many nodes dirties
most pages of these tables: their size is what it writes. A store written before the split
has no rows in the two tables, and its snapshots are read whole, as they were written.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import msgspec

from cloud_hub.ingest.fleet import NodeState

COLUMNS: Final = (
    "node, online, boot, started_at, last_seen, active_model, active_version, capabilities, "
    "readings, anomalies, latency_p99_ms, outbox_depth, drift_psi_max, updated_at, drift"
)


@dataclass(frozen=True, slots=True)
class NodeRow:
    """One node as last written by the hub; ``online`` is None before its first status."""

    node: str
    online: bool | None
    boot: str
    started_at: float | None
    last_seen: float | None
    active_model: str | None
    active_version: str | None
    capabilities: dict[str, object] | None
    readings: int
    anomalies: int
    latency_p99_ms: float | None
    outbox_depth: int | None
    drift_psi_max: float | None
    updated_at: float
    drift: str | None = None  # "ok", or "watch: <channel>" / "drifting: <channel>"


def row_of(state: NodeState, updated_at: float) -> NodeRow:
    """The registry row for ``state``."""
    caps = msgspec.to_builtins(state.capabilities) if state.capabilities else None
    telemetry = state.telemetry
    return NodeRow(
        node=state.node,
        online=state.online,
        boot=state.boot,
        started_at=state.started_at,
        last_seen=state.last_seen,
        active_model=state.model.name if state.model else None,
        active_version=state.model.version if state.model else None,
        capabilities=caps,
        readings=state.readings,
        anomalies=state.anomalous,
        latency_p99_ms=telemetry.latency_p99_ms if telemetry else None,
        outbox_depth=telemetry.outbox_depth if telemetry else None,
        drift_psi_max=state.drift.psi_max if state.drift else None,
        updated_at=updated_at,
        drift=_drift_text(state),
    )


def row_values(state: NodeState, updated_at: float) -> tuple[object, ...]:
    """``row_params(row_of(state, updated_at))`` made directly: a commit makes one per node
    it writes whole, and the capabilities go to JSON without a dict in between."""
    caps = state.capabilities
    model = state.model
    telemetry = state.telemetry
    return (
        state.node,
        None if state.online is None else int(state.online),
        state.boot,
        state.started_at,
        state.last_seen,
        model.name if model else None,
        model.version if model else None,
        msgspec.json.encode(caps).decode() if caps else None,
        state.readings,
        state.anomalous,
        telemetry.latency_p99_ms if telemetry else None,
        telemetry.outbox_depth if telemetry else None,
        state.drift.psi_max if state.drift else None,
        updated_at,
        _drift_text(state),
    )


def _drift_text(state: NodeState) -> str | None:
    drift = state.drift.state if state.drift else None
    if drift is None:
        return None
    return drift.level if not drift.channel else f"{drift.level}: {drift.channel}"


def row_params(row: NodeRow) -> tuple[object, ...]:
    """The values of ``row`` in the order of the registry columns (both stores use them)."""
    caps = msgspec.json.encode(row.capabilities).decode() if row.capabilities else None
    online = None if row.online is None else int(row.online)
    return (
        row.node,
        online,
        row.boot,
        row.started_at,
        row.last_seen,
        row.active_model,
        row.active_version,
        caps,
        row.readings,
        row.anomalies,
        row.latency_p99_ms,
        row.outbox_depth,
        row.drift_psi_max,
        row.updated_at,
        row.drift,
    )


def row_from_values(values: tuple[Any, ...]) -> NodeRow:
    """The row read back from the registry columns (the inverse of :func:`row_params`)."""
    (node, online, boot, started, seen, model, version, caps, *rest) = values
    readings, anomalies, p99, depth, psi, updated, drift = rest
    return NodeRow(
        node=node,
        online=None if online is None else bool(online),
        boot=boot,
        started_at=started,
        last_seen=seen,
        active_model=model,
        active_version=version,
        capabilities=msgspec.json.decode(caps) if caps is not None else None,
        readings=readings,
        anomalies=anomalies,
        latency_p99_ms=p99,
        outbox_depth=depth,
        drift_psi_max=psi,
        updated_at=updated,
        drift=drift,
    )


# node_live's columns, in the order of cloud_hub.ingest.snapshot.dump_live.
LIVE_COLUMNS: Final = (
    "node, last_seen, readings, anomalies, events_opened, events_closed, threshold, updated_at, "
    "boot, coverage"
)
# node_health's columns, in the order of cloud_hub.ingest.snapshot.dump_health.
HEALTH_COLUMNS: Final = "node, telemetry, dropped_seen, errors_seen, latency_p99_ms, outbox_depth"
# The registry columns node_live (l) and node_health (h) hold newer copies of.
_OVERLAID: Final = {
    "last_seen": "l",
    "readings": "l",
    "anomalies": "l",
    "updated_at": "l",
    "latency_p99_ms": "h",
    "outbox_depth": "h",
}
SELECT_ROWS: Final = (
    "SELECT "
    + ", ".join(
        f"COALESCE({_OVERLAID[c]}.{c}, n.{c})" if c in _OVERLAID else f"n.{c}"
        for c in COLUMNS.split(", ")
    )
    + " FROM nodes AS n LEFT JOIN node_live AS l ON l.node = n.node"
    " LEFT JOIN node_health AS h ON h.node = n.node"
)
"""Every registry row with its live and health parts (``ORDER BY``, ``WHERE`` may follow)."""
SELECT_STATES: Final = (
    "SELECT s.data, l.last_seen, l.readings, l.anomalies, l.events_opened, l.events_closed, "
    "l.threshold, l.boot, l.coverage, h.telemetry, h.dropped_seen, h.errors_seen "
    "FROM node_state AS s LEFT JOIN node_live AS l ON l.node = s.node "
    "LEFT JOIN node_health AS h ON h.node = s.node"
)
"""Every stored snapshot with its live and health parts, for
cloud_hub.ingest.snapshot.load_node."""


def live_table(real: str, integer: str, blob: str) -> str:
    """node_live's DDL in a backend's types (SQLite: REAL, INTEGER, BLOB)."""
    return f"""CREATE TABLE IF NOT EXISTS node_live (
        node            TEXT PRIMARY KEY,
        last_seen       {real},
        readings        {integer} NOT NULL,
        anomalies       {integer} NOT NULL,
        events_opened   {integer} NOT NULL,
        events_closed   {integer} NOT NULL,
        threshold       {real} NOT NULL,
        updated_at      {real} NOT NULL,
        boot            TEXT NOT NULL,
        coverage        {blob}
    )"""


def health_table(integer: str, real: str, blob: str) -> str:
    """node_health's DDL in a backend's types."""
    return f"""CREATE TABLE IF NOT EXISTS node_health (
        node            TEXT PRIMARY KEY,
        telemetry       {blob} NOT NULL,
        dropped_seen    {integer} NOT NULL,
        errors_seen     {integer} NOT NULL,
        latency_p99_ms  {real} NOT NULL,
        outbox_depth    {integer} NOT NULL
    )"""


def upsert(table: str, columns: str, mark: str) -> str:
    """``INSERT`` of a row of ``columns`` (keyed by the first, ``node``) that replaces the
    stored one's other columns; ``mark`` is the driver's placeholder (``?`` or ``%s``)."""
    names = columns.split(", ")
    return (
        f"INSERT INTO {table} ({columns}) VALUES ({', '.join([mark] * len(names))}) "
        "ON CONFLICT (node) DO UPDATE SET " + ", ".join(f"{c} = excluded.{c}" for c in names[1:])
    )
