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
* per node, at ``max_boots`` streams: the oldest boot is forgotten and its gap count is
  kept, so ``gaps()`` never goes down because of it.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field

DEFAULT_MAX_INTERVALS = 10_000
DEFAULT_MAX_BOOTS = 8


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

    def _enforce_bound(self) -> None:
        while len(self._starts) > self._max_intervals:
            hole = self._starts[1] - self._ends[0]
            self._ends[0] = self._ends[1]
            del self._starts[1], self._ends[1]
            self._covered += hole
            self.abandoned += hole


@dataclass(slots=True)
class _NodeStreams:
    boots: dict[str, Coverage] = field(default_factory=dict)
    retired_gaps: int = 0


class Deduper:
    """Tells new messages from redeliveries and counts the seqs never seen, per node."""

    def __init__(
        self, max_intervals: int = DEFAULT_MAX_INTERVALS, max_boots: int = DEFAULT_MAX_BOOTS
    ) -> None:
        if max_boots < 1:
            raise ValueError(f"max_boots must be >= 1, got {max_boots}")
        self._nodes: dict[str, _NodeStreams] = {}
        self._max_intervals = max_intervals
        self._max_boots = max_boots
        self.duplicates = 0

    def observe(self, node: str, boot: str, seq: int) -> bool:
        """Record ``seq``; True if it is new, False if it was seen (or given up) before."""
        streams = self._nodes.get(node)
        if streams is None:
            streams = self._nodes[node] = _NodeStreams()
        stream = streams.boots.get(boot)
        if stream is None:
            stream = streams.boots[boot] = Coverage(self._max_intervals)
            self._forget_old_boots(streams)
        if stream.add(seq, seq + 1):
            return True
        self.duplicates += 1
        return False

    def gaps(self, node: str) -> int:
        """Seqs never seen between the lowest and highest seen, summed over the node's boots."""
        streams = self._nodes.get(node)
        if streams is None:
            return 0
        return streams.retired_gaps + sum(s.missing() for s in streams.boots.values())

    def _forget_old_boots(self, streams: _NodeStreams) -> None:
        while len(streams.boots) > self._max_boots:
            # dicts keep insertion order: the first boot is the one first seen.
            oldest = next(iter(streams.boots))
            streams.retired_gaps += streams.boots.pop(oldest).missing()
