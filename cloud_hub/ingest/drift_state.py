"""A node's drift state from its latest drift report: ok, watch or drifting, with a reason.

Pure: takes a Drift message, returns a value. The node's change detector (schemas.drift) does
the statistics; ``change`` is its CUSUM peak over the report interval as a fraction of the
threshold. A node is *drifting* when a channel's or the score's detector alarmed, *worth
watching* from ``watch`` of the threshold; the reason names the channel and the statistic.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from schemas.drift import DriftSpec
from schemas.messages import Drift

DriftLevel = Literal["ok", "watch", "drifting"]
LEVELS: tuple[DriftLevel, ...] = ("ok", "watch", "drifting")


@dataclass(frozen=True, slots=True)
class DriftState:
    """``channel`` is the culprit ("score" for the model's score, "" when ok)."""

    level: DriftLevel
    channel: str
    reason: str


def drift_state(drift: Drift, watch: float = DriftSpec().watch) -> DriftState:
    """The state of the node that sent ``drift``."""
    columns = [
        (c.channel, c.change, f"mean {c.mean_shift_sd:+.1f} SD, KS {c.ks:.2f}")
        for c in drift.channels
    ]
    score = drift.score
    columns.append(("score", score.change, f"p99 {score.p99:.3g}, KS {score.ks:.2f}"))
    channel, change, detail = max(columns, key=lambda c: c[1])
    if change >= 1.0:
        level: DriftLevel = "drifting"
    elif change >= watch:
        level = "watch"
    else:
        return DriftState("ok", "", f"largest CUSUM {change:.2f} of its threshold")
    return DriftState(level, channel, f"{channel}: CUSUM {change:.2f} of its threshold ({detail})")
