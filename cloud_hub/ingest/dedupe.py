"""Redelivery detection and gap counting by ``(node, boot, seq)``; pure, no I/O.

A stream is the messages of one boot of one node. Its seen seqs are kept as merged,
half-open intervals, so a stream that arrives in order costs one interval however long it
runs. A gap is a seq between the lowest and the highest seen that was never seen; a late
arrival fills it. Seqs before the first one the hub ever saw (sent before its first
subscription, or while its broker session had expired) are not gaps: the hub cannot tell
them from a node that started counting later.

Memory is bounded twice:

* per stream, at ``max_intervals`` intervals (that is, ``max_intervals - 1`` holes): beyond
  it the lowest hole is given up, its seqs stay counted as gaps for good, and a late arrival
  inside it is treated as a duplicate, because the hub no longer knows whether it saw it;
* per node, at ``max_boots`` streams in memory: the least recently observed one is evicted
  and its gap count is kept. The hub's store holds every stream (``take_dirty`` says what to
  write), and an evicted stream is loaded again when a message of it arrives, so a replay
  is never counted twice however many boots a node has shown.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from cloud_hub.ingest.coverage import DEFAULT_MAX_INTERVALS, BootCoverages, Coverage
from schemas.messages import MAX_RECEIPT_RANGES, Range

DEFAULT_MAX_BOOTS = 8
# Seqs remembered per stream between two receipts, to confirm the ranges that hold them.
RECEIPT_SAMPLES = 8


StreamLoader = Callable[[str, str], Coverage | None]


def _no_store(node: str, boot: str) -> Coverage | None:
    return None


class _NodeStreams(BootCoverages):
    """A node's streams in memory, least recently observed first (a stream observed again
    is set again, so it becomes the newest), and the gaps of those evicted from memory."""

    __slots__ = ("retired_gaps",)

    def __init__(self, retired_gaps: int = 0) -> None:
        super().__init__()
        self.retired_gaps = retired_gaps


class Deduper:
    """Tells new messages from redeliveries and counts the seqs never seen, per node.

    ``load`` finds a stream that is not in memory (evicted, or from before a restart) in the
    hub's store; with it, the bound on streams in memory never makes a replay count again.
    """

    def __init__(
        self,
        max_intervals: int = DEFAULT_MAX_INTERVALS,
        max_boots: int = DEFAULT_MAX_BOOTS,
        load: StreamLoader = _no_store,
    ) -> None:
        if max_boots < 1:
            raise ValueError(f"max_boots must be >= 1, got {max_boots}")
        self._nodes: dict[str, _NodeStreams] = {}
        self._max_intervals = max_intervals
        self._max_boots = max_boots
        self._load = load
        self._dirty: dict[tuple[str, str], Coverage] = {}
        self._due: dict[tuple[str, str], list[int]] = {}
        self.duplicates = 0

    def restore(self, stored_gaps: dict[str, int]) -> None:
        """Start from the store: ``stored_gaps`` is, per node, the missing seqs of its streams
        on disk (they are loaded one by one, when a message of theirs arrives)."""
        for node, gaps in stored_gaps.items():
            self._streams(node).retired_gaps += gaps

    def reload(self, gaps: dict[str, int], nodes: Iterable[str] | None = None) -> None:
        """Forget what is in memory of ``nodes`` (all: None) and start again from the store's
        ``gaps`` (a shared store: another hub may have written them since)."""
        if nodes is None:
            self._nodes = {n: _NodeStreams(retired_gaps=g) for n, g in gaps.items()}
            self._dirty.clear()
            self._due.clear()
            return
        names = set(nodes)
        for node in names:
            self._nodes[node] = _NodeStreams(retired_gaps=gaps.get(node, 0))
        self._dirty = {k: c for k, c in self._dirty.items() if k[0] not in names}
        self._due = {k: s for k, s in self._due.items() if k[0] not in names}

    def observe(self, node: str, boot: str, seq: int) -> bool:
        """Record ``seq``; True if it is new, False if it was seen (or given up) before."""
        stream = self.stream(node, boot)
        assert stream is not None  # create=True always gives one
        key = (node, boot)
        due = self._due.setdefault(key, [])
        if len(due) < RECEIPT_SAMPLES:
            due.append(seq)
        else:
            due[-1] = seq
        if stream.add(seq, seq + 1):
            self._dirty[key] = stream
            return True
        self.duplicates += 1
        return False

    def highest(self, node: str, boot: str) -> int | None:
        """The highest seq seen of a stream (None if none was)."""
        stream = self.stream(node, boot, create=False)
        return stream.highest() if stream is not None else None

    def stream(self, node: str, boot: str, create: bool = True) -> Coverage | None:
        """The stream's coverage, loaded from the store if it is not in memory."""
        streams = self._streams(node)
        if boot == streams.newest:
            # Already the most recent: nothing to reorder (most messages, most of the time).
            return streams[boot]
        coverage = streams.pop(boot, None)
        if coverage is None:
            # Evicted before its change was committed: the uncommitted copy is the newest.
            coverage = self._dirty.get((node, boot)) or self._load(node, boot)
            if coverage is not None:
                streams.retired_gaps -= coverage.missing()
            elif not create:
                return None
            else:
                coverage = Coverage(self._max_intervals)
        streams[boot] = coverage  # now the newest
        self._evict(node, streams)
        return coverage

    def gaps(self, node: str) -> int:
        """Seqs never seen between the lowest and highest seen, summed over the node's boots."""
        streams = self._nodes.get(node)
        if streams is None:
            return 0
        gaps = streams.retired_gaps
        for stream in streams.values():  # a loop, not sum(): per node per scrape
            gaps += stream.missing()
        return gaps

    def take_dirty(self) -> dict[tuple[str, str], Coverage]:
        """Streams changed since the last call, by ``(node, boot)`` (and forget they changed)."""
        dirty, self._dirty = self._dirty, {}
        return dirty

    def mark_dirty(self, streams: dict[tuple[str, str], Coverage]) -> None:
        """Report ``streams`` again from the next ``take_dirty`` (their write failed)."""
        self._dirty = {**streams, **self._dirty}

    def take_due(self) -> dict[tuple[str, str], list[Range]]:
        """Streams observed since the last call, each with the ranges a receipt should carry:
        the first one, the ones holding the seqs just observed, and the newest ones."""
        due, self._due = self._due, {}
        out: dict[tuple[str, str], list[Range]] = {}
        for (node, boot), seqs in due.items():
            stream = self._nodes[node].get(boot)
            if stream is not None:
                out[node, boot] = stream.receipt_ranges(seqs, MAX_RECEIPT_RANGES)
        return out

    def _streams(self, node: str) -> _NodeStreams:
        streams = self._nodes.get(node)
        if streams is None:
            streams = self._nodes[node] = _NodeStreams()
        return streams

    def _evict(self, node: str, streams: _NodeStreams) -> None:
        """Keep at most ``max_boots`` streams of a node in memory; the least recently
        observed goes (the store keeps it, and ``load`` brings it back)."""
        while len(streams) > self._max_boots:
            oldest = next(iter(streams))
            coverage = streams.pop(oldest)
            streams.retired_gaps += coverage.missing()
            self._due.pop((node, oldest), None)
