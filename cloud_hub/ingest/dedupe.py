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

from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from schemas.messages import MAX_RECEIPT_RANGES, Range

DEFAULT_MAX_INTERVALS = 10_000
DEFAULT_MAX_BOOTS = 8
# Seqs remembered per stream between two receipts, to confirm the ranges that hold them.
RECEIPT_SAMPLES = 8


class Coverage:
    """A set of integers kept as merged half-open intervals, with a bound on their number."""

    __slots__ = ("_covered", "_ends", "_max_intervals", "_starts", "abandoned")

    def __init__(self, max_intervals: int = DEFAULT_MAX_INTERVALS) -> None:
        if max_intervals < 1:
            raise ValueError(f"max_intervals must be >= 1, got {max_intervals}")
        self._starts: list[int] = []
        self._ends: list[int] = []
        self._covered = 0
        self._max_intervals = max_intervals
        self.abandoned = 0

    def add(self, start: int, end: int) -> int:
        """Cover ``[start, end)``; return how many of its integers were not covered before."""
        if end <= start:
            return 0
        ends = self._ends
        if ends and start >= ends[-1]:
            # The common case, a stream arriving in order: extend or follow the last interval
            # without bisecting or rebuilding slices (the hub's hot path, twice per message).
            if start == ends[-1]:
                ends[-1] = end
            else:
                self._starts.append(start)
                ends.append(end)
                self._enforce_bound()
            self._covered += end - start
            return end - start
        # Intervals that overlap or touch [start, end) merge with it into one.
        lo = bisect_left(self._ends, start)
        hi = bisect_right(self._starts, end)
        before = sum(self._ends[i] - self._starts[i] for i in range(lo, hi))
        if lo < hi:
            start = min(start, self._starts[lo])
            end = max(end, self._ends[hi - 1])
        self._starts[lo:hi] = [start]
        self._ends[lo:hi] = [end]
        added = end - start - before
        self._covered += added
        self._enforce_bound()
        return added

    def holes(self) -> int:
        """Integers between the lowest and highest covered one that are not covered."""
        if not self._starts:
            return 0
        return self._ends[-1] - self._starts[0] - self._covered

    def missing(self) -> int:
        """Holes plus the integers given up when the interval bound was hit."""
        return self.holes() + self.abandoned

    def __len__(self) -> int:
        return len(self._starts)

    def plausible(self, start: int, end: int, jump: int) -> bool:
        """Whether ``[start, end)`` lies within ``jump`` of what is covered (always, when
        nothing is): a hostile or broken sender cannot stretch the holes past that."""
        if not self._starts:
            return True
        return start >= self._starts[0] - jump and end <= self._ends[-1] + jump

    def __contains__(self, value: int) -> bool:
        i = bisect_right(self._starts, value) - 1
        return i >= 0 and value < self._ends[i]

    def highest(self) -> int | None:
        """The highest covered integer (None when empty)."""
        return self._ends[-1] - 1 if self._ends else None

    def intervals(self) -> list[Range]:
        """The covered intervals, ascending, half-open."""
        return list(zip(self._starts, self._ends, strict=True))

    @classmethod
    def of(cls, intervals: list[Range], abandoned: int, max_intervals: int) -> Coverage:
        """A coverage of stored ``intervals`` (ascending, disjoint, as from ``intervals()``)."""
        coverage = cls(max_intervals)
        coverage._starts = [s for s, _ in intervals]
        coverage._ends = [e for _, e in intervals]
        coverage._covered = sum(e - s for s, e in intervals)
        coverage.abandoned = abandoned
        return coverage

    def receipt_ranges(self, seqs: list[int], limit: int) -> list[Range]:
        """At most ``limit`` intervals: the first, those holding ``seqs``, then the newest."""
        if not self._starts:
            return []
        picked = {0}
        for seq in seqs:
            i = bisect_right(self._starts, seq) - 1
            if i >= 0 and seq < self._ends[i]:
                picked.add(i)
        for i in range(len(self._starts) - 1, -1, -1):
            if len(picked) >= limit:
                break
            picked.add(i)
        return [(self._starts[i], self._ends[i]) for i in sorted(picked)[:limit]]

    def _enforce_bound(self) -> None:
        while len(self._starts) > self._max_intervals:
            hole = self._starts[1] - self._ends[0]
            self._ends[0] = self._ends[1]
            del self._starts[1], self._ends[1]
            self._covered += hole
            self.abandoned += hole


StreamLoader = Callable[[str, str], Coverage | None]


def _no_store(node: str, boot: str) -> Coverage | None:
    return None


@dataclass(slots=True)
class _NodeStreams:
    # Insertion order is recency order: a stream moves to the end when it is observed.
    boots: dict[str, Coverage] = field(default_factory=dict)
    retired_gaps: int = 0
    newest: str | None = None  # the boot at the end of ``boots``


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
            return streams.boots[boot]
        coverage = streams.boots.pop(boot, None)
        if coverage is None:
            # Evicted before its change was committed: the uncommitted copy is the newest.
            coverage = self._dirty.get((node, boot)) or self._load(node, boot)
            if coverage is not None:
                streams.retired_gaps -= coverage.missing()
            elif not create:
                return None
            else:
                coverage = Coverage(self._max_intervals)
        streams.boots[boot] = coverage
        streams.newest = boot
        self._evict(node, streams)
        return coverage

    def gaps(self, node: str) -> int:
        """Seqs never seen between the lowest and highest seen, summed over the node's boots."""
        streams = self._nodes.get(node)
        if streams is None:
            return 0
        gaps = streams.retired_gaps
        for stream in streams.boots.values():  # a loop, not sum(): called per node per scrape
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
            stream = self._nodes[node].boots.get(boot)
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
        while len(streams.boots) > self._max_boots:
            oldest = next(iter(streams.boots))
            streams.retired_gaps += streams.boots.pop(oldest).missing()
            self._due.pop((node, oldest), None)
