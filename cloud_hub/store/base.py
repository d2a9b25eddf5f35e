"""The store interface the hub uses, and the choice of backend by URL.

Two ports, small ``Protocol``s next to their consumer (``cloud_hub.app``):

* :class:`HubStore`: what one hub needs (start from the stored state, commit a batch of
  changes in one transaction, read the registry). SQLite (``cloud_hub.ingest.registry``) and
  PostgreSQL (``cloud_hub.store.postgres``) both provide it.
* :class:`SharedStore`: a store several hubs write at once. :meth:`SharedStore.locked`
  opens a transaction holding a lock per node and gives the nodes' stored state; the hub
  applies its messages to that state and commits in the same transaction, so two hubs that
  received messages of one node apply them one after the other, each on the other's result.
  Only PostgreSQL provides it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence, Set
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from cloud_hub.ingest.snapshot import dump_health
from schemas.codec import DecodeError, decode, encode
from schemas.messages import ShadowReport
from schemas.topics import TopicError, parse_node_topic

if TYPE_CHECKING:
    from cloud_hub.ingest.coverage import Coverage
    from cloud_hub.ingest.fleet import NodeState
    from cloud_hub.ingest.registry import NodeRow

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


class StoreError(RuntimeError):
    """The store cannot be reached, read or written; the message names it and the problem."""


class HubStore(Protocol):
    """The hub's durable ingest state: registry rows, node snapshots and dedupe streams."""

    @property
    def location(self) -> str:
        """Where the store is, for logs (a path, or a URL without its password)."""
        ...

    def schema_version(self) -> int:
        """The highest migration step the store has run."""
        ...

    def load_states(self) -> list[NodeState]:
        """Every node's stored state (empty for a new store)."""
        ...

    def stream_gaps(self) -> dict[str, int]:
        """Per node, the seqs missing from its stored streams."""
        ...

    def load_stream(self, node: str, boot: str) -> Coverage | None:
        """The stored seqs seen of one node's boot, or None if it has none."""
        ...

    def commit(
        self,
        states: list[NodeState],
        streams: dict[tuple[str, str], Coverage],
        now: float,
        shadows: Mapping[str, ShadowReport] | None = None,
        *,
        profiles: Set[str] | None = None,
        healths: Set[str] | None = None,
    ) -> None:
        """Write changed nodes, streams, and the newer shadow reports of those nodes (from
        ``shadows``, the newest per node) in one transaction. Of every node its live part
        (cloud_hub.store.rows); of a node in ``profiles`` (None: every node) the registry row
        and whole snapshot too; of a node in ``healths`` (None: every node) its telemetry."""
        ...

    def load_shadows(self) -> dict[str, ShadowReport]:
        """The stored newest shadow-run report per node."""
        ...

    def nodes(self) -> list[NodeRow]:
        """Every node's registry row, sorted by id."""
        ...

    def close(self) -> None:
        """Release the connection."""
        ...


@dataclass(slots=True)
class Locked:
    """The stored state of the nodes a :meth:`SharedStore.locked` transaction holds."""

    states: list[NodeState] = field(default_factory=list)
    gaps: dict[str, int] = field(default_factory=dict)


@runtime_checkable
class SharedStore(HubStore, Protocol):
    """A store several hub processes write at once (see the module docstring)."""

    def locked(self, nodes: Sequence[str]) -> AbstractContextManager[Locked]:
        """A transaction holding ``nodes`` (no other hub can write them until it ends) with
        their stored state; ``commit`` and ``load_stream`` inside it belong to it. It commits
        when the block ends, rolls back if the block raises."""
        ...


class ShadowRows:
    """Which shadow reports a commit writes: those newer than the one stored per node (a run
    reports every drift interval, while its node's state changes with every message)."""

    def __init__(self) -> None:
        self._stored: dict[str, float] = {}

    def newer(
        self, states: list[NodeState], shadows: Mapping[str, ShadowReport] | None
    ) -> list[tuple[str, float, bytes]]:
        """(node, ts, MessagePack) of the reports of ``states``' nodes not yet stored."""
        if not shadows:
            return []
        return [
            (s.node, r.ts, encode(r))
            for s in states
            if (r := shadows.get(s.node)) is not None and self._stored.get(s.node) != r.ts
        ]

    def stored(self, rows: Iterable[tuple[str, float]]) -> None:
        """Note (node, ts) pairs as written or read."""
        self._stored.update(rows)

    def decode(self, rows: Iterable[tuple[str, bytes]], where: str) -> dict[str, ShadowReport]:
        """The reports of stored rows; a damaged row is a :class:`StoreError` naming it."""
        out: dict[str, ShadowReport] = {}
        for node, data in rows:
            try:
                out[node] = decode("shadow", bytes(data), f"{where} shadows/{node}")
            except DecodeError as exc:  # written by the hub, so only a damaged store does this
                raise StoreError(str(exc)) from None
        self.stored((node, r.ts) for node, r in out.items())
        return out


def whole_of(states: list[NodeState], profiles: Set[str] | None) -> list[NodeState]:
    """The nodes of ``states`` a commit writes whole: those in ``profiles`` (None: all)."""
    if profiles is None:
        return states
    return [s for s in states if s.node in profiles]


def health_rows(
    states: list[NodeState], whole: list[NodeState], healths: Set[str] | None
) -> list[tuple[object, ...]]:
    """The ``node_health`` rows a commit writes: of the nodes in ``healths`` (None: all) and
    of those written whole (their snapshot holds the same telemetry), if they have any."""
    if healths is None:
        chosen = states
    elif len(whole) == len(states):
        chosen = whole
    else:
        named = {s.node for s in whole} | healths
        chosen = [s for s in states if s.node in named]
    return [row for s in chosen if (row := dump_health(s)) is not None]


def is_postgres(url: str) -> bool:
    """Whether ``url`` names a PostgreSQL store."""
    return url.startswith(POSTGRES_SCHEMES)


def open_store(url: str, sqlite_path: Path) -> HubStore:
    """The store ``url`` names: PostgreSQL for ``postgresql://…``, else the SQLite file
    ``sqlite_path`` (``url`` empty)."""
    if is_postgres(url):
        # Imported here so that a hub on SQLite never loads libpq.
        from cloud_hub.store.postgres import PostgresStore

        return PostgresStore(url)
    if url:
        raise StoreError(f"store.url {url!r}: not a postgresql:// URL (empty = SQLite store.db)")
    from cloud_hub.ingest.registry import Registry  # it imports StoreError from here

    return Registry(sqlite_path)


def open_reader(url: str, sqlite_path: Path) -> HubStore:
    """The store for reading the registry from another process (the CLI): PostgreSQL for a
    ``postgresql://`` URL, else the SQLite file read-only."""
    if url:
        return open_store(url, sqlite_path)
    from cloud_hub.ingest.registry import Registry

    return Registry(sqlite_path, readonly=True)


def node_ids(topics: Iterable[str]) -> list[str]:
    """The distinct node ids of node topics, sorted (the order locks are taken in)."""
    out: set[str] = set()
    for topic in topics:
        try:
            out.add(parse_node_topic(topic).node)
        except TopicError:
            continue  # ingest rejects it and counts it; it touches no node
    return sorted(out)
