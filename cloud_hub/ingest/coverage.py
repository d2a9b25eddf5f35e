"""Sets of integers as merged intervals (seqs seen, readings received), and a node's such
sets per boot; pure, no I/O.

A hub holds two coverages per node and boot in memory (its seqs and its readings) for 10,000
nodes, so both are kept small: one interval is two ints, and a node's boots are two slots
until it shows a second boot.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from collections.abc import Iterator, Mapping, MutableMapping

import msgspec

from schemas.messages import Range

DEFAULT_MAX_INTERVALS = 10_000


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


class BootCoverages(MutableMapping[str, Coverage]):
    """A node's coverages per boot, oldest boot first.

    The newest is held in two slots and older boots in a dict made only when a second boot
    arrives: 56 bytes a node where a dict of one entry takes 184. It behaves as a dict in
    insertion order: setting a boot not on record makes it the newest; iteration goes from
    the oldest to the newest."""

    __slots__ = ("_boot", "_newest", "_older")

    def __init__(self, items: Mapping[str, Coverage] | None = None) -> None:
        self._boot: str | None = None
        self._newest: Coverage | None = None
        self._older: dict[str, Coverage] | None = None
        for boot, coverage in (items or {}).items():
            self[boot] = coverage

    @property
    def newest(self) -> str | None:
        """The boot set last (None when empty)."""
        return self._boot

    def __getitem__(self, boot: str) -> Coverage:
        if boot == self._boot and self._newest is not None:
            return self._newest
        if self._older is not None:
            return self._older[boot]
        raise KeyError(boot)

    def get(self, boot: str, default: Coverage | None = None) -> Coverage | None:  # type: ignore[override]
        """The coverage of ``boot`` (on the hot path: no exception for the usual case)."""
        if boot == self._boot:
            return self._newest
        if self._older is not None:
            return self._older.get(boot, default)
        return default

    def __setitem__(self, boot: str, coverage: Coverage) -> None:
        if boot == self._boot:
            self._newest = coverage
            return
        if self._older is not None and boot in self._older:
            self._older[boot] = coverage  # keeps its place, as a dict does
            return
        if self._boot is not None and self._newest is not None:
            if self._older is None:
                self._older = {}
            self._older[self._boot] = self._newest
        self._boot, self._newest = boot, coverage

    def __delitem__(self, boot: str) -> None:
        if boot == self._boot:
            if self._older:  # the newest of the older boots moves up
                self._boot = next(reversed(self._older))
                self._newest = self._older.pop(self._boot)
            else:
                self._boot, self._newest = None, None
            if not self._older:
                self._older = None
            return
        if self._older is None:
            raise KeyError(boot)
        del self._older[boot]
        if not self._older:
            self._older = None

    def __iter__(self) -> Iterator[str]:
        if self._older is not None:
            yield from self._older
        if self._boot is not None:
            yield self._boot

    def __reversed__(self) -> Iterator[str]:
        if self._boot is not None:
            yield self._boot
        if self._older is not None:
            yield from reversed(self._older)

    def __len__(self) -> int:
        return (self._boot is not None) + (len(self._older) if self._older else 0)

    def values(self) -> tuple[Coverage, ...]:  # type: ignore[override]
        """The coverages, oldest boot first (a tuple: read per node at each scrape)."""
        if self._older is None:
            return () if self._newest is None else (self._newest,)
        newest = () if self._newest is None else (self._newest,)
        return (*self._older.values(), *newest)

    def __repr__(self) -> str:
        return f"BootCoverages({dict(self.items())!r})"
