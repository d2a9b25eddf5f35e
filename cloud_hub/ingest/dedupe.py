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

import msgspec

from schemas.messages import MAX_RECEIPT_RANGES, Range

DEFAULT_MAX_INTERVALS = 10_000
DEFAULT_MAX_BOOTS = 8
# Seqs remembered per stream between two receipts, to confirm the ranges that hold them.
RECEIPT_SAMPLES = 8


class Coverage(msgspec.Struct, gc=False, eq=False):
    """A set of integers kept as merged half-open intervals, with a bound on their number.

    Kept small, as a hub holds two per node and boot in memory (its seqs and its readings):
    one interval, the common case of a stream arriving in order, is two ints (``_lo``,
    ``_hi``) and no list; more are a flat, ascending list of their bounds ``[start0, end0,
    start1, end1, ...]`` (``_spans``), in which an integer is covered when ``bisect_right``
    puts it at an odd index. ``_lo`` and ``_hi`` are always the lowest start and the highest
    end (equal while empty), and ``_holes`` the integers between them not covered. A Struct
    without garbage-collector tracking, 16 bytes less than a class with slots: it holds ints
    and a list of ints, so it can be in no reference cycle. Create it with ``max_intervals``
    only (or :meth:`of`); equality is identity."""

    max_intervals: int = DEFAULT_MAX_INTERVALS
    _lo: int = 0
    _hi: int = 0
    _spans: list[int] | None = None  # two intervals or more
    _holes: int = 0
    abandoned: int = 0

    def __post_init__(self) -> None:
        if self.max_intervals < 1:
            raise ValueError(f"max_intervals must be >= 1, got {self.max_intervals}")

    def add(self, start: int, end: int) -> int:
        """Cover ``[start, end)``; return how many of its integers were not covered before."""
        if end <= start:
            return 0
        hi = self._hi
        if start >= hi and hi != self._lo:
            # The common case, a stream arriving in order: extend or follow the last interval
            # without bisecting (the hub's hot path, twice per message).
            self._hi = end
            spans = self._spans
            if start == hi:
                if spans is not None:
                    spans[-1] = end
            else:
                if spans is None:
                    self._spans = [self._lo, hi, start, end]
                else:
                    spans += (start, end)
                self._holes += start - hi
                self._enforce_bound()
            return end - start
        if hi == self._lo:
            self._lo, self._hi = start, end
            return end - start
        spans = self._spans if self._spans is not None else [self._lo, hi]
        covered = hi - self._lo - self._holes
        # Intervals that overlap or touch [start, end) merge with it into one: bounds from
        # index i0 to j0 (both even, so whole intervals) are replaced by its two.
        i = bisect_left(spans, start)
        j = bisect_right(spans, end)
        i0, j0 = i - (i & 1), j + (j & 1)
        new_start = spans[i0] if i & 1 else start
        new_end = spans[j0 - 1] if j & 1 else end
        before = sum(spans[k + 1] - spans[k] for k in range(i0, j0, 2))
        spans[i0:j0] = (new_start, new_end)
        added = new_end - new_start - before
        self._lo, self._hi = spans[0], spans[-1]
        self._holes = self._hi - self._lo - covered - added
        self._spans = spans if len(spans) > 2 else None
        self._enforce_bound()
        return added

    def holes(self) -> int:
        """Integers between the lowest and highest covered one that are not covered."""
        return self._holes

    def missing(self) -> int:
        """Holes plus the integers given up when the interval bound was hit."""
        return self._holes + self.abandoned

    def __len__(self) -> int:
        if self._spans is not None:
            return len(self._spans) // 2
        return 0 if self._hi == self._lo else 1

    def plausible(self, start: int, end: int, jump: int) -> bool:
        """Whether ``[start, end)`` lies within ``jump`` of what is covered (always, when
        nothing is): a hostile or broken sender cannot stretch the holes past that."""
        if self._hi == self._lo:
            return True
        return start >= self._lo - jump and end <= self._hi + jump

    def __contains__(self, value: int) -> bool:
        if self._spans is None:
            return self._lo <= value < self._hi
        return bisect_right(self._spans, value) & 1 == 1

    def highest(self) -> int | None:
        """The highest covered integer (None when empty)."""
        return None if self._hi == self._lo else self._hi - 1

    def intervals(self) -> list[Range]:
        """The covered intervals, ascending, half-open."""
        spans = self._spans
        if spans is None:
            return [] if self._hi == self._lo else [(self._lo, self._hi)]
        return list(zip(spans[0::2], spans[1::2], strict=True))

    @classmethod
    def of(cls, intervals: list[Range], abandoned: int, max_intervals: int) -> Coverage:
        """A coverage of stored ``intervals`` (ascending, disjoint, as from ``intervals()``)."""
        coverage = cls(max_intervals)
        if intervals:
            coverage._lo, coverage._hi = intervals[0][0], intervals[-1][1]
            covered = sum(e - s for s, e in intervals)
            coverage._holes = coverage._hi - coverage._lo - covered
            if len(intervals) > 1:
                coverage._spans = [b for interval in intervals for b in interval]
        coverage.abandoned = abandoned
        return coverage

    def receipt_ranges(self, seqs: list[int], limit: int) -> list[Range]:
        """At most ``limit`` intervals: the first, those holding ``seqs``, then the newest."""
        spans = self._spans
        if spans is None:
            return [] if self._hi == self._lo else [(self._lo, self._hi)][:limit]
        picked = {0}
        for seq in seqs:
            i = bisect_right(spans, seq)
            if i & 1:
                picked.add(i // 2)
        for i in range(len(spans) // 2 - 1, -1, -1):
            if len(picked) >= limit:
                break
            picked.add(i)
        return [(spans[2 * i], spans[2 * i + 1]) for i in sorted(picked)[:limit]]

    def _enforce_bound(self) -> None:
        spans = self._spans
        if spans is None or len(spans) <= 2 * self.max_intervals:
            return
        # The lowest holes are given up: their seqs stay missing, and count as covered.
        excess = len(spans) // 2 - self.max_intervals
        given_up = sum(spans[2 * k + 2] - spans[2 * k + 1] for k in range(excess))
        del spans[1 : 2 * excess + 1]
        self._holes -= given_up
        self.abandoned += given_up
        if len(spans) == 2:
            self._spans = None


StreamLoader = Callable[[str, str], Coverage | None]


def _no_store(node: str, boot: str) -> Coverage | None:
    return None


class _NodeStreams(msgspec.Struct, gc=False, eq=False):
    """A node's streams in memory: the most recently observed one (``newest``, ``current``)
    and the others, least recently observed first, in a dict made only when the node shows a
    second boot (most show one: 10,000 nodes per hub). Untracked by the garbage collector,
    as Coverage: nothing in it refers back to it."""

    retired_gaps: int = 0
    newest: str | None = None
    current: Coverage | None = None
    older: dict[str, Coverage] | None = None

    @property
    def boots(self) -> dict[str, Coverage]:
        """The streams in memory by boot, least recently observed first (a copy)."""
        boots = dict(self.older) if self.older else {}
        if self.newest is not None and self.current is not None:
            boots[self.newest] = self.current
        return boots

    def __len__(self) -> int:
        return (self.current is not None) + (len(self.older) if self.older else 0)

    def get(self, boot: str) -> Coverage | None:
        """The stream of ``boot`` if it is in memory."""
        if boot == self.newest:
            return self.current
        return self.older.get(boot) if self.older else None

    def pop_older(self, boot: str) -> Coverage | None:
        """Take the stream of ``boot`` out of the older ones (None if it is not there)."""
        if not self.older:
            return None
        coverage = self.older.pop(boot, None)
        if not self.older:
            self.older = None
        return coverage

    def make_newest(self, boot: str, coverage: Coverage) -> None:
        """Hold ``coverage`` as the newest stream (``boot`` is not in memory)."""
        if self.newest is not None and self.current is not None:
            if self.older is None:
                self.older = {}
            self.older[self.newest] = self.current
        self.newest, self.current = boot, coverage

    def pop_oldest(self) -> tuple[str, Coverage]:
        """Take out the least recently observed stream (there are two or more)."""
        assert self.older
        boot = next(iter(self.older))
        coverage = self.older.pop(boot)
        if not self.older:
            self.older = None
        return boot, coverage


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
            return streams.current
        coverage = streams.pop_older(boot)
        if coverage is None:
            # Evicted before its change was committed: the uncommitted copy is the newest.
            coverage = self._dirty.get((node, boot)) or self._load(node, boot)
            if coverage is not None:
                streams.retired_gaps -= coverage.missing()
            elif not create:
                return None
            else:
                coverage = Coverage(self._max_intervals)
        streams.make_newest(boot, coverage)
        self._evict(node, streams)
        return coverage

    def gaps(self, node: str) -> int:
        """Seqs never seen between the lowest and highest seen, summed over the node's boots."""
        streams = self._nodes.get(node)
        if streams is None:
            return 0
        gaps = streams.retired_gaps
        if streams.current is not None:
            gaps += streams.current.missing()
        if streams.older:
            for stream in streams.older.values():  # a loop, not sum(): per node per scrape
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
            oldest, coverage = streams.pop_oldest()
            streams.retired_gaps += coverage.missing()
            self._due.pop((node, oldest), None)
