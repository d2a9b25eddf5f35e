"""The rollout gate: thresholds in, figures in, a verdict naming every failed check out (pure).

A wave's nodes after the switch are compared with their own figures before it (a window of
the same length) and with the nodes not yet updated over the same time; a shadow run's
candidate arm is compared with the active arm on the same readings. Checks, each skipped
when either side has no readings (and said so):

- flag rate: fails when the rate rises by more than ``flag_rate_rise`` (absolute) *and* to
  more than ``flag_rate_ratio`` times the baseline (both, so that 0 -> 0.1 % is no alarm);
- score distribution: total variation distance of the score / threshold histograms
  (:func:`schemas.behaviour.distance`) over ``score_distance``;
- machine episodes opened: more than ``episodes_rise`` per node over the baseline's;
- latency p99: over ``latency_ratio`` times the baseline's and ``latency_rise_ms`` more;
- unscored (NaN) readings: the share rises by more than ``unscored_rise``;
- node errors and probation rollbacks after the switch: more than allowed (none by default).
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from cloud_hub.ingest.behaviour import Figures, merged
from schemas.behaviour import distance
from schemas.messages import ArmFigures


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Limits of the gate (hub config ``[rollout]``); the defaults are stated in the docs."""

    flag_rate_ratio: float = 2.0
    flag_rate_rise: float = 0.01
    score_distance: float = 0.25
    episodes_rise: float = 1.0
    latency_ratio: float = 2.0
    latency_rise_ms: float = 5.0
    unscored_rise: float = 0.01
    errors: int = 0
    probation_rollbacks: int = 0
    min_readings: int = 50


@dataclass(frozen=True, slots=True)
class Check:
    """One comparison: what, against which baseline, the two figures, the limit, the result."""

    name: str
    against: str
    value: float
    baseline: float
    limit: str
    passed: bool

    def text(self) -> str:
        """``flag_rate vs before: 0.2100 (baseline 0.0100; limit ...) FAIL``."""
        mark = "ok" if self.passed else "FAIL"
        return (
            f"{self.name} vs {self.against}: {_num(self.value)} "
            f"(baseline {_num(self.baseline)}; {self.limit}) {mark}"
        )


@dataclass(frozen=True, slots=True)
class Verdict:
    """The gate's answer: pass or fail, every check made, and what could not be compared."""

    passed: bool
    checks: tuple[Check, ...]
    notes: tuple[str, ...] = ()
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> list[Check]:
        """The checks that failed."""
        return [c for c in self.checks if not c.passed]

    def summary(self) -> str:
        """One line: PASS or FAIL and each failed check with its figures."""
        if self.passed:
            return f"PASS ({len(self.checks)} checks)"
        reasons = [c.text() for c in self.failed] or list(self.notes)
        return "FAIL: " + "; ".join(reasons)

    def as_dict(self) -> dict[str, Any]:
        """Everything as plain values, for the decision record."""
        return {
            "passed": self.passed,
            "checks": [asdict(c) for c in self.checks],
            "notes": list(self.notes),
            "figures": self.figures,
        }


@dataclass(frozen=True, slots=True)
class Windows:
    """Figures of a group of nodes before and after a moment, over windows of equal length."""

    before: Figures
    after: Figures


def judge_wave(
    wave: Sequence[Windows],
    control: Sequence[Windows],
    limits: Thresholds,
    steady: Sequence[Windows] = (),
) -> Verdict:
    """The wave's nodes (one ``Windows`` each) after the switch against themselves before it,
    the baseline moved by what changed meanwhile on the ``control`` nodes not yet updated (a
    plant-wide change is not the model's doing). Rates are over the summed figures; the score
    distance is the median of the wave's per-node distances against the 90th percentile of the
    same distance on the control nodes and the ``steady`` ones (updated in earlier waves, so on
    the new model in both windows): one node's histogram moves between windows by itself.
    Without figures from before the switch, the control's figures after it are the baseline."""
    total, rest, nodes = _sum(wave), _sum(control), max(len(wave), 1)
    notes: list[str] = []
    checks: list[Check] = list(_absolute(total.after, limits))
    enough = limits.min_readings
    if total.after.readings < enough:
        notes.append(
            f"only {total.after.readings} readings after the switch (need {enough}): "
            "cannot judge the new model"
        )
    has_control = rest.before.readings >= enough and rest.after.readings >= enough
    if total.before.readings >= enough:
        shift = rest if has_control else Windows(Figures(), Figures())
        if not has_control:
            notes.append("no nodes not yet updated to compare with: own figures only")
        tv = (_typical(wave), _natural([*control, *steady]))
        checks += _relative(
            total.after, total.before, shift, "before", nodes=nodes, limits=limits, tv=tv
        )
    elif rest.after.readings >= enough:
        notes.append("no figures from before the switch: compared with the nodes not updated")
        same = Windows(Figures(), Figures())
        checks += _relative(
            total.after, rest.after, same, "not updated", nodes=nodes, limits=limits
        )
    else:
        notes.append("nothing to compare with: no figures before the switch, no other nodes")
    figures = {
        "after": total.after.as_dict(),
        "before": total.before.as_dict(),
        "control_before": rest.before.as_dict(),
        "control_after": rest.after.as_dict(),
        "nodes": len(wave),
        "control_nodes": len(control),
    }
    compared = any(c.against != "allowed" for c in checks)
    passed = total.after.readings >= enough and compared and all(c.passed for c in checks)
    return Verdict(passed, tuple(checks), tuple(notes), figures)


def _sum(groups: Sequence[Windows]) -> Windows:
    return Windows(merged(g.before for g in groups), merged(g.after for g in groups))


def _per_node(groups: Sequence[Windows]) -> list[float]:
    distances = (_tv(g.after, g.before) for g in groups if g.before.readings and g.after.readings)
    return sorted(d for d in distances if not math.isnan(d))


def _typical(wave: Sequence[Windows]) -> float:
    """The median of the wave's per-node distances (NaN without any)."""
    found = _per_node(wave)
    return statistics.median(found) if found else math.nan


def _natural(control: Sequence[Windows]) -> float:
    """The 90th percentile of the control nodes' per-node distances (0 without any)."""
    found = _per_node(control)
    return found[max(0, math.ceil(0.9 * len(found)) - 1)] if found else 0.0


def judge_shadow(
    reports: Mapping[str, tuple[ArmFigures, ArmFigures]], limits: Thresholds
) -> Verdict:
    """The candidate arm against the active arm, summed over the nodes' shadow reports
    (node -> (active, candidate))."""
    if not reports:
        return Verdict(False, (), ("no shadow report from any node",))
    active = Figures()
    candidate = Figures()
    for arm_active, arm_candidate in reports.values():
        active.add(_arm(arm_active))
        candidate.add(_arm(arm_candidate))
    checks: list[Check] = []
    notes: list[str] = []
    if candidate.readings < limits.min_readings:
        notes.append(f"only {candidate.readings} readings scored by the candidate")
    else:
        none = Windows(Figures(), Figures())
        checks = _relative(candidate, active, none, "active arm", nodes=len(reports), limits=limits)
    figures = {"candidate": candidate.as_dict(), "active": active.as_dict(), "nodes": len(reports)}
    passed = candidate.readings >= limits.min_readings and all(c.passed for c in checks)
    return Verdict(passed, tuple(checks), tuple(notes), figures)


def _absolute(after: Figures, limits: Thresholds) -> list[Check]:
    """Errors and probation rollbacks after the switch: no baseline needed."""
    return [
        Check(
            "errors",
            "allowed",
            after.errors,
            0,
            f"limit {limits.errors}",
            after.errors <= limits.errors,
        ),
        Check(
            "probation_rollbacks",
            "allowed",
            after.probation_rollbacks,
            0,
            f"limit {limits.probation_rollbacks}",
            after.probation_rollbacks <= limits.probation_rollbacks,
        ),
    ]


def _relative(
    new: Figures,
    base: Figures,
    shift: Windows,
    against: str,
    *,
    nodes: int,
    limits: Thresholds,
    tv: tuple[float, float] | None = None,
) -> list[Check]:
    """The checks of ``new`` against ``base``, the baseline moved by ``shift`` (before ->
    after of other nodes over the same windows; empty figures: no move); ``tv``: the score
    distance and the move it is judged against, when they are not those of the sums."""
    moved = shift.before.readings > 0 and shift.after.readings > 0
    flag_move = _rate(shift.after.flag_rate) - _rate(shift.before.flag_rate) if moved else 0.0
    nan_move = (
        _rate(shift.after.unscored_rate) - _rate(shift.before.unscored_rate) if moved else 0.0
    )
    if tv is None:
        tv = (_tv(new, base), _tv(shift.after, shift.before) if moved else 0.0)
    checks = [
        _flag_rate(_rate(new.flag_rate), _rate(base.flag_rate) + flag_move, against, limits),
        _distance(tv[0], tv[1], against, limits),
        _episodes(new, base, against, nodes, limits),
    ]
    if new.latency_p99_ms > 0 and base.latency_p99_ms > 0:
        checks.append(_latency(new, base, against, limits))
    value, baseline = _rate(new.unscored_rate), _rate(base.unscored_rate) + nan_move
    checks.append(
        Check(
            "unscored_rate",
            against,
            value,
            baseline,
            f"rise at most {limits.unscored_rise:g}",
            value - baseline <= limits.unscored_rise,
        )
    )
    return checks


def _flag_rate(rate: float, baseline: float, against: str, limits: Thresholds) -> Check:
    baseline = max(baseline, 0.0)
    worse = rate - baseline > limits.flag_rate_rise and rate > baseline * limits.flag_rate_ratio
    limit = f"rise at most {limits.flag_rate_rise:g} or x{limits.flag_rate_ratio:g}"
    return Check("flag_rate", against, rate, baseline, limit, not worse)


def _distance(tv: float, moved: float, against: str, limits: Thresholds) -> Check:
    ok = math.isnan(tv) or tv - moved <= limits.score_distance
    limit = f"total variation at most {limits.score_distance:g} over the baseline's"
    return Check("score_distance", against, tv, moved, limit, ok)


def _episodes(new: Figures, base: Figures, against: str, nodes: int, limits: Thresholds) -> Check:
    """Machine episodes opened per node, the baseline's scaled to as many readings."""
    scale = new.readings / base.readings if base.readings else 0.0
    value, baseline = new.episodes / max(nodes, 1), base.episodes * scale / max(nodes, 1)
    limit = f"at most {limits.episodes_rise:g} more per node"
    ok = value - baseline <= limits.episodes_rise
    return Check("episodes", against, value, baseline, limit, ok)


def _latency(new: Figures, base: Figures, against: str, limits: Thresholds) -> Check:
    value, baseline = new.latency_p99_ms, base.latency_p99_ms
    worse = value > baseline * limits.latency_ratio and value - baseline > limits.latency_rise_ms
    limit = f"x{limits.latency_ratio:g} and +{limits.latency_rise_ms:g} ms at most"
    return Check("latency_p99_ms", against, value, baseline, limit, not worse)


def _tv(a: Figures, b: Figures) -> float:
    return distance(a.counts, b.counts)


def _arm(arm: ArmFigures) -> Figures:
    return Figures(
        readings=arm.readings,
        flagged=arm.flagged,
        unscored=arm.unscored,
        counts=list(arm.score_counts) or Figures().counts,
        episodes=arm.episodes,
        latency_sum_ms=arm.latency_p99_ms,
        latency_reports=1,
    )


def _rate(value: float) -> float:
    return 0.0 if math.isnan(value) else value


def _num(value: float) -> str:
    if math.isnan(value):
        return "n/a"
    return f"{value:.4g}"
