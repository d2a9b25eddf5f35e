"""Shadow runs (pure): both arms' figures, agreement, the CPU budget, and a candidate that
raises no events and cannot disturb the active model."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import numpy as np
import pytest
from numpy.typing import NDArray

from edge_node.scoring.batcher import ResultBatcher
from edge_node.scoring.events import EpisodeConfig
from edge_node.scoring.pipeline import Pipeline, Scored
from edge_node.scoring.shadow import Candidate, RunSpec, ShadowRun, budget_window
from edge_node.scoring.shadow_figures import Arm, CpuMeter, Reservoir
from edge_node.sources.base import Block
from schemas import behaviour
from schemas.alarm import AlarmSpec
from schemas.manifest import InputSpec, Profile, ReferenceProfile
from schemas.messages import ArmFigures, ModelRef
from schemas.samples import MANIFEST

F32 = NDArray[np.float32]
SOURCE = ["a", "b"]
PROFILE = Profile(mean=0.0, std=1.0, edges=[-100.0, 0.0, 100.0], fractions=[0.5, 0.5])
ONE_READING = AlarmSpec(open_after=1, open_within=1, close_after=1)


class Model:
    """Scores a window by its last reading on channel a, times ``gain``; optionally fails."""

    def __init__(self, version: str, threshold: float, gain: float = 1.0, window: int = 1) -> None:
        self.manifest = msgspec.structs.replace(
            MANIFEST,
            version=version,
            input=InputSpec(name="window", channels=SOURCE, window=window),
            threshold=threshold,
            alarm=ONE_READING,
            reference=ReferenceProfile(channels={c: PROFILE for c in SOURCE}, score=PROFILE),
            sensors={},
        )
        self.ref = ModelRef(MANIFEST.name, version)
        self.gain = gain
        self.fail: Exception | None = None
        self.nan = False

    def score(self, windows: F32) -> tuple[F32, F32 | None]:
        if self.fail is not None:
            raise self.fail
        scores = (windows[:, -1, 0] * self.gain).astype(np.float32)
        if self.nan:
            scores[:] = np.nan
        return scores, None


class Ticks:
    """A clock that moves ``step`` seconds each time it is read."""

    def __init__(self, step: float) -> None:
        self.t = 0.0
        self.step = step

    def __call__(self) -> float:
        self.t += self.step
        return self.t


def values(a: list[float]) -> F32:
    return np.column_stack([a, np.zeros(len(a))]).astype(np.float32)


def spec(duration_s: float = 600.0, budget: float = 0.5, report_s: float = 10.0) -> RunSpec:
    return RunSpec(command="c-1", duration_s=duration_s, cpu_budget=budget, report_s=report_s)


def one_reading(
    run: ShadowRun, active: Model, *, t: float, now: float, clock: Callable[[], float]
) -> None:
    """The active model scored one quiet reading at ``t``: hand it to the run."""
    block = Block(t, 1.0, values([1.0]))
    ones, quiet = np.ones(1, np.float32), np.zeros(1, bool)
    run.observe(block, active, scores=ones, flags=quiet, ms=0.1, now=now, clock=clock)


def arms(run: ShadowRun) -> tuple[ArmFigures, ArmFigures]:
    """Both arms' figures with every reading handed to the run counted."""
    run.count()
    return run.active.figures(), run.shadow.figures()


def pipeline_with(active: Model) -> Pipeline:
    return Pipeline(
        active, SOURCE, ResultBatcher(max_readings=10_000, max_age_s=1e9), EpisodeConfig()
    )


def feed(
    pipe: Pipeline, rows: list[float], t0: float, now: float, clock: Callable[[], float]
) -> Scored:
    return pipe.process(Block(t0, 1.0, values(rows)), now, clock)


def test_both_arms_see_the_same_readings_and_the_candidate_follows_its_own_rule() -> None:
    active, cand = Model("1", threshold=5.0), Model("2", threshold=2.0)
    pipe = pipeline_with(active)
    run = ShadowRun(spec(), Candidate(cand, SOURCE), active, now=0.0, wall=1000.0)
    pipe.shadow = run
    feed(pipe, [1, 3, 6, 1, 3, 1], t0=0.0, now=1.0, clock=lambda: 0.0)
    a, c = arms(run)
    assert (a.readings, c.readings) == (6, 6)
    assert a.flagged == 1  # only 6 is over 5
    assert c.flagged == 3  # 3, 6 and 3 are over 2
    assert (a.episodes, c.episodes) == (1, 2)  # 3,6 is one episode; the second 3 another
    # Alike on 1, 6, 1, 1; apart on the two 3s.
    assert run.agreement == pytest.approx(4 / 6)
    assert c.score_counts == behaviour.ratio_counts([1, 3, 6, 1, 3, 1], 2.0)


def test_the_candidate_raises_no_events_and_leaves_results_to_the_active_model() -> None:
    active, cand = Model("1", threshold=1e9), Model("2", threshold=1e-6)
    pipe = pipeline_with(active)
    run = ShadowRun(spec(), Candidate(cand, SOURCE), active, now=0.0, wall=0.0)
    pipe.shadow = run
    out = feed(pipe, [5.0] * 20, t0=0.0, now=1.0, clock=lambda: 0.0)
    batches = pipe.flush(2.0, force=True)
    assert arms(run)[1].flagged == 20  # it would have flagged every reading...
    assert out.changes == [] and out.drift == []  # ...but no episode of any model opened
    assert [b.model for b in batches] == [active.ref]
    assert not any(b.flags.any() for b in batches)


def test_a_failing_candidate_never_disturbs_the_active_scores() -> None:
    active, cand = Model("1", threshold=5.0), Model("2", threshold=5.0)
    cand.fail = RuntimeError("boom")
    alone = pipeline_with(Model("1", threshold=5.0))
    pipe = pipeline_with(active)
    run = ShadowRun(spec(), Candidate(cand, SOURCE), active, now=0.0, wall=0.0)
    pipe.shadow = run
    rows = [1.0, 7.0, 2.0]
    feed(alone, rows, 0.0, 1.0, lambda: 0.0)
    feed(pipe, rows, 0.0, 1.0, lambda: 0.0)
    expected = alone.flush(2.0, force=True)[0]
    got = pipe.flush(2.0, force=True)[0]
    np.testing.assert_array_equal(got.scores, expected.scores)
    np.testing.assert_array_equal(got.flags, expected.flags)
    figures = arms(run)[1]
    assert (figures.readings, figures.unscored, figures.flagged) == (3, 3, 0)
    assert "RuntimeError: boom" in run.explain()
    assert np.isnan(run.agreement)  # no reading was scored by both


def test_nan_scores_are_unscored_and_left_out_of_agreement() -> None:
    active, cand = Model("1", threshold=5.0), Model("2", threshold=5.0)
    cand.nan = True
    run = ShadowRun(spec(), Candidate(cand, SOURCE), active, now=0.0, wall=0.0)
    pipe = pipeline_with(active)
    pipe.shadow = run
    feed(pipe, [1.0, 9.0], 0.0, 1.0, lambda: 0.0)
    assert arms(run)[1].unscored == 2
    assert "NaN" in run.explain()
    assert arms(run)[0].flagged == 1


def test_the_first_window_minus_one_readings_only_warm_the_candidate_up() -> None:
    active, cand = Model("1", threshold=5.0), Model("2", threshold=5.0, window=4)
    run = ShadowRun(spec(), Candidate(cand, SOURCE), active, now=0.0, wall=0.0)
    pipe = pipeline_with(active)
    pipe.shadow = run
    feed(pipe, [1.0] * 10, 0.0, 1.0, lambda: 0.0)
    active_arm, candidate_arm = arms(run)
    assert active_arm.readings == candidate_arm.readings == 7


def test_a_candidate_over_its_cpu_budget_is_stopped_but_not_for_one_slow_block() -> None:
    active, cand = Model("1", threshold=5.0), Model("2", threshold=5.0)
    run = ShadowRun(
        spec(duration_s=100.0, budget=0.25), Candidate(cand, SOURCE), active, now=0.0, wall=0.0
    )
    assert run.cpu.window_s == 10.0
    # The clock is read four times per block, so Ticks(s) costs 3 s of candidate time.
    # One block that took 1.5 s (three times the half second it covers), then 0.015 s a
    # second: the window (10 s) sees 16 %, under the budget.
    one_reading(run, active, t=0.0, now=0.5, clock=Ticks(0.5))
    for t in range(1, 25):
        one_reading(run, active, t=float(t), now=float(t), clock=Ticks(0.005))
    assert not run.finished
    for t in range(25, 40):  # now 0.75 s of candidate time every second
        one_reading(run, active, t=float(t), now=float(t), clock=Ticks(0.25))
    assert run.state == "over_budget"
    assert "above the budget of 25.0%" in run.reason
    readings = arms(run)[1].readings
    one_reading(run, active, t=40.0, now=40.0, clock=Ticks(0.25))
    assert arms(run)[1].readings == readings  # an ended run scores nothing more


def test_cpu_meter_share_is_time_over_wall_time() -> None:
    meter = CpuMeter(started=100.0, window_s=2.0)
    meter.add(101.0, 0.5)
    assert meter.window_share(101.0) is None
    meter.add(102.0, 0.1)
    assert meter.share(102.0) == pytest.approx(0.3)
    assert meter.window_share(102.0) == pytest.approx(0.3)
    meter.add(104.0, 0.1)  # the first two have left the window
    assert meter.window_share(104.0) == pytest.approx(0.05)


def test_budget_window_is_a_tenth_of_the_run_within_bounds() -> None:
    assert budget_window(5.0) == 2.0
    assert budget_window(300.0) == 30.0
    assert budget_window(86400.0) == 60.0


def test_the_run_ends_done_after_its_duration_and_reports_on_its_interval() -> None:
    active, cand = Model("1", threshold=5.0), Model("2", threshold=5.0)
    run = ShadowRun(
        spec(duration_s=30.0, report_s=10.0), Candidate(cand, SOURCE), active, now=0.0, wall=0.0
    )
    assert not run.due(5.0)
    assert run.due(10.0)
    assert not run.due(15.0)
    assert run.due(20.0)
    run.check(29.9)
    assert not run.finished
    run.check(30.0)
    assert run.state == "done"
    assert not run.due(40.0)  # the final report is the caller's, not an interval one


def test_a_switch_of_the_active_model_ends_the_run() -> None:
    active, cand = Model("1", threshold=5.0), Model("2", threshold=5.0)
    run = ShadowRun(spec(), Candidate(cand, SOURCE), active, now=0.0, wall=0.0)
    other = Model("3", threshold=5.0)
    one_reading(run, other, t=0.0, now=1.0, clock=lambda: 0.0)
    assert run.state == "stopped"
    assert "changed to" in run.reason


def test_report_carries_both_arms() -> None:
    active, cand = Model("1", threshold=5.0), Model("2", threshold=2.0)
    run = ShadowRun(spec(), Candidate(cand, SOURCE), active, now=0.0, wall=500.0)
    pipe = pipeline_with(active)
    pipe.shadow = run
    feed(pipe, [1.0, 3.0, 6.0, 4.0], 0.0, 4.0, Ticks(0.001))
    report = run.report(now=4.0, node="n1", boot="b", seq=3, ts=504.0)
    assert report.state == "running" and report.command == "c-1"
    assert (report.start, report.end) == (500.0, 504.0)
    assert report.active.model == active.ref and report.candidate.model == cand.ref
    assert report.candidate.flagged == 3 and report.active.flagged == 1
    assert report.candidate.score_p50 == pytest.approx(3.5)
    assert report.cpu_share > 0
    assert report.candidate.latency_p99_ms > 0


def test_an_arm_counts_an_episode_that_spans_blocks_once() -> None:
    arm = Arm(ModelRef("m", "1"), threshold=1.0)
    arm.add(np.array([2.0, 2.0], np.float32), np.array([False, True]), [0.1])
    arm.add(np.array([2.0, 0.0], np.float32), np.array([True, False]), [0.1])
    arm.add(np.array([2.0], np.float32), np.array([True]), [0.1])
    assert arm.episodes == 2
    assert arm.flagged == 3


def test_reservoir_keeps_a_uniform_sample_of_a_long_stream() -> None:
    sample = Reservoir()  # 4096 values kept of 200,000: the median within about 2 %
    for start in range(0, 200_000, 500):
        sample.add(np.arange(start, start + 500, dtype=np.float64))
    p50, p99 = sample.percentiles([50, 99])
    assert p50 == pytest.approx(100_000, rel=0.05)  # the first values alone would give ~2,000
    assert p99 == pytest.approx(198_000, rel=0.01)
    assert np.isnan(Reservoir().percentiles([50])[0])


def test_readings_polled_one_at_a_time_count_as_one_block_does() -> None:
    rng = np.random.default_rng(5)
    rows = [float(x) for x in rng.normal(3.0, 2.0, 700)]
    figures = []
    for block in (1, 700):
        active, cand = Model("1", threshold=5.0), Model("2", threshold=2.0, window=3)
        run = ShadowRun(spec(), Candidate(cand, SOURCE), active, now=0.0, wall=0.0)
        pipe = pipeline_with(active)
        pipe.shadow = run
        for start in range(0, len(rows), block):
            feed(pipe, rows[start : start + block], start * 0.02, start * 0.02, lambda: 0.0)
        a, c = arms(run)
        figures.append(
            (
                a.readings,
                a.flagged,
                a.episodes,
                a.score_counts,
                c.readings,
                c.flagged,
                c.episodes,
                c.score_counts,
                run.agreement,
            )
        )
    assert figures[0] == figures[1]
    assert figures[0][0] == 698  # the candidate's first two readings warmed it up


def test_the_budget_counts_the_candidates_cpu_clock_not_time_spent_waiting() -> None:
    active, cand = Model("1", threshold=5.0), Model("2", threshold=5.0)
    cpu = Ticks(0.0001)  # the thread's CPU clock: the candidate works briefly...
    run = ShadowRun(
        spec(duration_s=20.0, budget=0.25), Candidate(cand, SOURCE), active, now=0.0, wall=0.0,
        cpu_clock=cpu,
    )  # fmt: skip
    for t in range(1, 10):  # ...while the loop's clock says each block took 0.75 s
        one_reading(run, active, t=float(t), now=float(t), clock=Ticks(0.25))
    assert not run.finished
    assert run.cpu_share(9.0) == pytest.approx(9 * 0.0001 / 9.0)


def test_a_candidate_lane_that_raises_ends_the_run_failed_and_the_block_is_scored() -> None:
    active, cand = Model("1", threshold=5.0), Model("2", threshold=5.0)
    run = ShadowRun(spec(), Candidate(cand, SOURCE), active, now=0.0, wall=0.0)
    pipe = pipeline_with(active)
    pipe.shadow = run
    bad = Block(0.0, 1.0, np.ones((2, 1), np.float32))  # a channel short: its lane raises
    run.observe(bad, active, scores=np.ones(2, np.float32), flags=np.zeros(2, bool), ms=0.1,
                now=1.0, clock=lambda: 0.0)  # fmt: skip
    assert run.state == "failed"
    assert run.reason.startswith("candidate: ")
    out = feed(pipe, [1.0, 9.0], 2.0, 2.0, lambda: 0.0)  # the active model goes on
    assert out.error == ""
    assert pipe.flush(3.0, force=True)[0].flags.tolist() == [False, True]
