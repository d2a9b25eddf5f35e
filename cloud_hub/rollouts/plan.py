"""A rollout's waves: from ``--waves 1,10%,50%,100%`` and the chosen nodes to lists of nodes (pure).

Each entry is cumulative: a count of nodes (``1``) or a share of the fleet chosen
(``10%``, rounded up) that has the new model once the wave is done. Every wave adds at least
one node; entries that would add none are dropped; the last wave always completes the set,
so a spec that stops short of 100 % still ends with every chosen node updated.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

DEFAULT_WAVES: Final = "1,10%,50%,100%"


class PlanError(ValueError):
    """A waves spec that cannot be read; the message names the bad entry."""


@dataclass(frozen=True, slots=True)
class WaveSpec:
    """Nodes updated once the wave is done: ``count`` of them, or ``percent`` of all."""

    count: int | None = None
    percent: float | None = None

    def target(self, total: int) -> int:
        """How many nodes of ``total`` this entry means (at most ``total``)."""
        if self.percent is not None:
            return min(total, math.ceil(total * self.percent / 100 - 1e-9))
        return min(total, self.count or 0)


def parse_waves(text: str) -> list[WaveSpec]:
    """``"1,10%,50%,100%"`` as specs; PlanError naming a bad or decreasing entry."""
    specs: list[WaveSpec] = []
    for raw in text.split(","):
        entry = raw.strip()
        try:
            spec = (
                WaveSpec(percent=float(entry[:-1]))
                if entry.endswith("%")
                else WaveSpec(count=int(entry))
            )
        except ValueError:
            raise PlanError(f"wave {entry!r}: a node count (5) or a share (10%)") from None
        if (spec.percent is not None and not 0 < spec.percent <= 100) or (
            spec.count is not None and spec.count < 1
        ):
            raise PlanError(f"wave {entry!r}: counts start at 1, shares lie in (0, 100]%")
        specs.append(spec)
    return specs


def plan_waves(nodes: Sequence[str], specs: Sequence[WaveSpec]) -> list[list[str]]:
    """The nodes each wave adds, in the order given; every wave adds at least one node."""
    total = len(nodes)
    waves: list[list[str]] = []
    done = 0
    for spec in specs:
        target = max(spec.target(total), done + 1)
        if target > total:
            break
        waves.append(list(nodes[done:target]))
        done = target
    if done < total:
        waves.append(list(nodes[done:]))
    return waves


def select_group(known: Iterable[str], pattern: str) -> list[str]:
    """The known node ids matching the glob ``pattern`` (``pump-*``), sorted."""
    return sorted(n for n in known if fnmatch.fnmatchcase(n, pattern))
