"""A node's reading coverage per boot, oldest boot first; pure, no I/O.

Nearly every node has one boot on record, so the newest is held in two slots and older boots
in a dict made only when a second boot arrives: 56 bytes a node where a dict of one entry
takes 184 (10,000 nodes per hub). It behaves as a dict in insertion order: setting a boot not
on record makes it the newest; iteration goes from the oldest to the newest.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, MutableMapping

from cloud_hub.ingest.dedupe import Coverage


class BootCoverages(MutableMapping[str, Coverage]):
    __slots__ = ("_boot", "_newest", "_older")

    def __init__(self, items: Mapping[str, Coverage] | None = None) -> None:
        self._boot: str | None = None
        self._newest: Coverage | None = None
        self._older: dict[str, Coverage] | None = None
        for boot, coverage in (items or {}).items():
            self[boot] = coverage

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
