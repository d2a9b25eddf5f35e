"""A shadow run: a candidate model scores the same readings beside the active one (pure).

The pipeline hands every block it scored, with the active model's scores and flags, to
:meth:`ShadowRun.observe`. The candidate gets its own windows, sensor checks and alarm rule
(from its manifest), so its flags follow its own rule; it raises no events, publishes no
results and feeds no drift statistics: all it leaves behind are the figures of a
``ShadowReport``. Both arms count the same readings: those from the first one whose candidate
window holds no start-up padding (the first ``window - 1`` readings only warm it up).

The candidate's cost is the time the run's ``cpu_clock`` (the node gives it the thread's CPU
clock, so that a busy machine does not count waiting for a core as cost; the loop's clock
without one) measures around its whole step (sensor checks, windows, model, alarm), over the
time ``now`` says has passed. Over the last
:func:`budget_window` seconds, a share above the run's ``cpu_budget`` ends it (``over_budget``):
one slow block (a page fault, a scheduling hiccup) must not end a run, a steady cost must.
A candidate that raises or returns NaN leaves its readings unscored; nothing it does reaches
the active model's scoring.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

from edge_node.scoring.pipeline import Scorer
from edge_node.scoring.shadow_figures import Arm, CpuMeter
from edge_node.scoring.validation import Validator
from edge_node.scoring.window import Windower
from edge_node.sources.base import Block
from schemas.alarm import AlarmFilter
from schemas.drift import finite
from schemas.messages import ShadowReport

F32 = npt.NDArray[np.float32]
Flags = npt.NDArray[np.bool_]
State = Literal["running", "done", "stopped", "over_budget", "failed"]

# Readings counted at once: each count is a few numpy calls of microseconds whatever their
# size, so a node polling one reading at a time gathers this many before counting them.
COUNT_EVERY = 256


def budget_window(duration_s: float) -> float:
    """Seconds over which the CPU budget is judged: a tenth of the run, within 2 s and 60 s."""
    return min(60.0, max(2.0, duration_s / 10.0))


@dataclass(frozen=True)
class CandidateRun:
    """The candidate's view of one block."""

    scores: F32
    flags: Flags
    complete: Flags  # windows with none of the start-up padding in them
    ms: float  # the model call alone
    error: str


class Candidate:
    """The candidate's own lane: its channels, sensor checks, windows and alarm rule."""

    def __init__(self, scorer: Scorer, source_channels: list[str]) -> None:
        manifest = scorer.manifest
        channels = manifest.input.channels
        missing = [c for c in channels if c not in source_channels]
        if missing:
            raise ValueError(
                f"candidate {manifest.name}@{manifest.version} needs channels {missing} "
                f"that the source does not have (it has {source_channels})"
            )
        self.scorer = scorer
        self.threshold = manifest.threshold
        self._columns = [source_channels.index(c) for c in channels]
        fill = np.array([manifest.reference.channels[c].mean for c in channels], np.float32)
        self._windower = Windower(manifest.input.window, fill)
        self._validator = Validator(manifest)
        self._alarm = AlarmFilter(manifest.alarm)

    def run(self, block: Block, clock: Callable[[], float]) -> CandidateRun:
        """Score one block; a model failure leaves its readings unscored (NaN)."""
        values = np.ascontiguousarray(block.values[:, self._columns], dtype=np.float32)
        checked = self._validator.check(block.t0, block.period, values)
        batch = self._windower.push(checked.values)
        error = ""
        contributions: F32 | None = None
        start = clock()
        try:
            scores, contributions = self.scorer.score(batch.windows)
            scores = np.asarray(scores, np.float32).reshape(-1)
            if scores.size != block.n:
                raise ValueError(f"{scores.size} scores for {block.n} readings")
        # Whatever the candidate does wrong stays in its arm: counted unscored, never raised.
        except Exception as exc:
            scores, contributions = np.full(block.n, np.nan, np.float32), None
            error = f"inference failed: {type(exc).__name__}: {exc}"
        ms = (clock() - start) * 1000.0
        if not error and not np.isfinite(scores).all():
            error = "model produced NaN or infinite scores"
        in_window = checked.in_window
        driven: Flags
        if not in_window.any():  # the common case: no faulty cell, nothing sensor-driven
            driven = np.zeros(block.n, bool)
        elif contributions is None or len(contributions) != len(in_window):
            driven = np.asarray(in_window.any(axis=1), bool)
        else:
            top = np.argmax(finite(np.abs(contributions)), axis=1)
            driven = np.asarray(in_window[np.arange(len(top)), top], bool)
        scored = np.isfinite(scores)
        with np.errstate(invalid="ignore"):
            exceed = scored & batch.complete & (scores > self.threshold) & ~driven
        flags = self._alarm.update(exceed) & scored
        return CandidateRun(scores, flags, batch.complete, ms, error)


class Pending:
    """Both arms' readings waiting to be counted (see :data:`COUNT_EVERY`)."""

    def __init__(self, size: int = COUNT_EVERY) -> None:
        self.scores = np.empty((2, size), np.float32)  # active, candidate
        self.flags = np.empty((2, size), bool)
        self.ms: tuple[list[float], list[float]] = ([], [])
        self.n = 0

    def put(self, scores: F32, flags: Flags, column: int, start: int) -> None:
        """One arm's readings at ``start`` of the buffer."""
        self.scores[column, start : start + len(scores)] = scores
        self.flags[column, start : start + len(flags)] = flags


@dataclass(frozen=True)
class RunSpec:
    """What the shadow command asked for, and how often to report."""

    command: str
    duration_s: float
    cpu_budget: float
    report_s: float


class ShadowRun:
    """One shadow run: the two arms, their agreement, the candidate's cost and the run's state.

    ``now`` is the node's monotonic clock, ``wall`` its unix time (only for the report);
    ``cpu_clock`` times the candidate's work (default: the clock :meth:`observe` is given).
    """

    def __init__(
        self,
        spec: RunSpec,
        candidate: Candidate,
        active: Scorer,
        *,
        now: float,
        wall: float,
        cpu_clock: Callable[[], float] | None = None,
    ) -> None:
        self.spec = spec
        self._cpu_clock = cpu_clock
        self.state: State = "running"
        self.reason = ""
        self.started = now
        self.started_wall = wall
        self._candidate = candidate
        self.active = Arm(active.ref, active.manifest.threshold)
        self.shadow = Arm(candidate.scorer.ref, candidate.threshold)
        self.cpu = CpuMeter(now, budget_window(spec.duration_s))
        self._both = 0
        self._alike = 0
        self._pending = Pending()
        self._next_report = now + spec.report_s
        self._ended: float | None = None
        self.last_error = ""

    @property
    def finished(self) -> bool:
        """The run has ended (its final report is due)."""
        return self.state != "running"

    @property
    def agreement(self) -> float:
        """Fraction of readings both arms scored that they flagged alike (NaN before any)."""
        self.count()
        return self._alike / self._both if self._both else float("nan")

    def observe(
        self,
        block: Block,
        active: Scorer,
        *,
        scores: F32,
        flags: Flags,
        ms: float,
        now: float,
        clock: Callable[[], float],
    ) -> None:
        """The active model scored ``block``: score it with the candidate and count both."""
        if self.finished:
            return
        if active.ref != self.active.model:
            changed = f"{active.ref.name}@{active.ref.version}"
            self.end("stopped", f"the active model changed to {changed}", now)
            return
        cpu_clock = self._cpu_clock or clock
        start = cpu_clock()
        try:
            run = self._candidate.run(block, clock)
        # The model's own failures are caught inside; anything else the candidate's lane
        # raises (its sensor checks, its windows) ends the run, never the active scoring.
        except Exception as exc:
            self.end("failed", f"candidate: {type(exc).__name__}: {exc}", now)
            return
        self._gather(scores, flags, run)
        self._pending.ms[0].append(ms)
        self._pending.ms[1].append(run.ms)
        self.cpu.add(now, cpu_clock() - start)
        if run.error:
            self.last_error = run.error
        self.check(now)

    def _gather(self, scores: F32, flags: Flags, run: CandidateRun) -> None:
        """Queue the readings both arms count (those of complete candidate windows)."""
        counted = run.complete
        arms = [(scores, flags), (run.scores, run.flags)]
        if not counted.all():
            arms = [(sc[counted], fl[counted]) for sc, fl in arms]
        pending, done = self._pending, 0
        total = len(arms[0][0])
        while done < total:
            take = min(len(pending.scores[0]) - pending.n, total - done)
            for column, (sc, fl) in enumerate(arms):
                pending.put(sc[done : done + take], fl[done : done + take], column, pending.n)
            pending.n += take
            done += take
            if pending.n == len(pending.scores[0]):
                self.count()

    def count(self) -> None:
        """Count the queued readings in both arms and in the agreement."""
        pending = self._pending
        n = pending.n
        a_scores, c_scores = pending.scores[0, :n], pending.scores[1, :n]
        a_flags, c_flags = pending.flags[0, :n], pending.flags[1, :n]
        self.active.add(a_scores, a_flags, pending.ms[0])
        self.shadow.add(c_scores, c_flags, pending.ms[1])
        both = np.isfinite(a_scores) & np.isfinite(c_scores)
        self._both += int(np.count_nonzero(both))
        self._alike += int(np.count_nonzero(both & (a_flags == c_flags)))
        pending.n = 0
        pending.ms[0].clear()
        pending.ms[1].clear()

    def check(self, now: float) -> None:
        """End the run when its time is up or its cost over budget."""
        if self.finished:
            return
        share = self.cpu.window_share(now)
        if share is not None and share > self.spec.cpu_budget:
            self.end(
                "over_budget",
                f"the candidate took {share:.1%} of a core over the last "
                f"{self.cpu.window_s:g} s, above the budget of {self.spec.cpu_budget:.1%}",
                now,
            )
        elif now - self.started >= self.spec.duration_s:
            self.end("done", "", now)

    def end(self, state: State, reason: str, now: float) -> None:
        """End the run (the first ending wins)."""
        if self.finished:
            return
        self.state, self.reason = state, reason
        self._ended = now

    def due(self, now: float) -> bool:
        """Whether an interval report is due (at most one per ``report_s``)."""
        if self.finished or now < self._next_report:
            return False
        self._next_report = now + self.spec.report_s
        return True

    def cpu_share(self, now: float) -> float:
        """The candidate's time over the run's time so far."""
        return self.cpu.share(now if self._ended is None else self._ended)

    def explain(self) -> str:
        """The report's reason: why the run ended, or the candidate's last error."""
        if self.reason:
            return self.reason
        return f"candidate: {self.last_error}" if self.last_error else ""

    def report(self, *, now: float, node: str, boot: str, seq: int, ts: float) -> ShadowReport:
        """The run's figures so far as a message (``ts`` is the wall time it is sent at)."""
        agreement = self.agreement  # counts what is queued first
        return ShadowReport(
            node=node,
            boot=boot,
            seq=seq,
            ts=ts,
            command=self.spec.command,
            state=self.state,
            reason=self.explain(),
            start=self.started_wall,
            end=ts,
            active=self.active.figures(),
            candidate=self.shadow.figures(),
            agreement=agreement,
            cpu_share=self.cpu_share(now),
        )
