"""Switching models mid-stream: no reading lost or scored twice, real windows, and probation."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import msgspec
import numpy as np
import pytest
from numpy.typing import NDArray

from edge_node.lifecycle.probation import ProbationPolicy
from edge_node.scoring.batcher import PendingBatch, ResultBatcher
from edge_node.scoring.events import EpisodeConfig
from edge_node.scoring.pipeline import ChannelMismatch, Pipeline, Scored
from edge_node.sources.base import Block
from schemas.alarm import AlarmSpec
from schemas.manifest import InputSpec, Profile, ReferenceProfile
from schemas.messages import ModelRef
from schemas.samples import MANIFEST

F32 = NDArray[np.float32]
SOURCE = ["a", "b", "c"]
PROFILE = Profile(mean=0.0, std=1.0, edges=[-1.0, 0.0, 1.0], fractions=[0.5, 0.5])


def last_of_first_channel(windows: F32) -> F32:
    return windows[:, -1, 0].astype(np.float32)


class FakeScorer:
    """Scores a window by a function of it and remembers every window it was given."""

    def __init__(
        self,
        version: str,
        channels: list[str],
        window: int,
        fn: Callable[[F32], F32] = last_of_first_channel,
        threshold: float = 1e9,
    ) -> None:
        self.manifest = msgspec.structs.replace(
            MANIFEST,
            version=version,
            input=InputSpec(name="window", channels=channels, window=window),
            threshold=threshold,
            reference=ReferenceProfile(channels={c: PROFILE for c in channels}, score=PROFILE),
        )
        self.ref = ModelRef(MANIFEST.name, version)
        self.seen: list[F32] = []
        self.fn = fn

    def score(self, windows: F32) -> tuple[F32, F32 | None]:
        self.seen.append(windows.copy())
        return self.fn(windows), None


def readings(start: int, n: int) -> F32:
    """Reading i has values (i, 1000 + i, 2000 + i) on channels a, b, c."""
    i = np.arange(start, start + n, dtype=np.float32)[:, None]
    return (i + np.array([0, 1000, 2000], np.float32)).astype(np.float32)


class Feed:
    """Feeds consecutive blocks to a pipeline and keeps everything it produced."""

    def __init__(self, pipeline: Pipeline) -> None:
        self.pipeline = pipeline
        self.fed = 0
        self.batches: list[PendingBatch] = []
        self.outputs: list[Scored] = []

    def block(self, n: int, clock: Callable[[], float] = lambda: 0.0) -> Scored:
        out = self.pipeline.process(Block(float(self.fed), 1.0, readings(self.fed, n)), 0.0, clock)
        self.fed += n
        self.batches += out.batches
        self.outputs.append(out)
        return out

    def switch(self, scorer: FakeScorer, **probation: Any) -> Scored:
        out = self.pipeline.switch(scorer, 0.0, **probation)
        self.batches += out.batches
        return out

    def flushed(self) -> list[PendingBatch]:
        return self.batches + self.pipeline.flush(0.0, force=True)


def pipeline(scorer: FakeScorer, max_readings: int = 1000) -> Pipeline:
    return Pipeline(scorer, SOURCE, ResultBatcher(max_readings, 60.0), EpisodeConfig(2, 2))


def test_a_switch_loses_and_doubles_no_reading_and_never_mixes_models() -> None:
    old, new = FakeScorer("1", ["a", "b"], 4), FakeScorer("2", ["c", "a"], 6)
    feed = Feed(pipeline(old, max_readings=7))
    for n in (3, 5, 4):
        feed.block(n)
    switched = feed.switch(new)
    assert [(b.model, b.first, b.n) for b in switched.batches] == [(old.ref, 7, 5)]
    for n in (2, 9, 1):
        feed.block(n)
    batches = feed.flushed()
    assert sum(b.n for b in batches) == feed.fed == 24
    assert [b.first for b in batches] == list(itertools.accumulate([0] + [b.n for b in batches]))[
        :-1
    ]
    models = [b.model.version for b in batches]
    assert models == sorted(models), "no old-model batch after a new-model one"
    boundary = next(b for b in batches if b.model == new.ref)
    assert boundary.first == 12, "the batch open at the switch was cut there"
    scores = np.concatenate([b.scores for b in batches])
    expected = np.r_[np.arange(12), 2000 + np.arange(12, 24)]  # old: channel a; new: channel c
    np.testing.assert_array_equal(scores, expected)


def test_a_model_with_a_longer_window_than_history_still_starts() -> None:
    old, new = FakeScorer("1", ["a"], 2), FakeScorer("2", ["a"], 4)
    p = Pipeline(old, SOURCE, ResultBatcher(100, 60.0), EpisodeConfig(), history=2)
    p.process(Block(0.0, 1.0, readings(0, 5)), 0.0, lambda: 0.0)
    p.switch(new, 0.0)
    p.process(Block(5.0, 1.0, readings(5, 1)), 0.0, lambda: 0.0)
    # Only the last two readings were kept: the window pads with the oldest of them.
    np.testing.assert_array_equal(new.seen[0][0, :, 0], [3, 3, 4, 5])


def test_the_new_model_starts_with_windows_of_real_history() -> None:
    old, new = FakeScorer("1", ["a", "b"], 3), FakeScorer("2", ["c", "a"], 5)
    feed = Feed(pipeline(old))
    feed.block(2)
    feed.block(3)
    feed.switch(new)
    feed.block(2)
    first = new.seen[0]
    # Window ending at reading 5: readings 1..5 in the new model's column order (c, a).
    expected = readings(1, 5)[:, [2, 0]]
    np.testing.assert_array_equal(first[0], expected)
    np.testing.assert_array_equal(first[1], readings(2, 5)[:, [2, 0]])


def test_a_switch_closes_the_old_models_episode_and_reports_its_drift() -> None:
    old = FakeScorer(
        "1", ["a", "b"], 2, fn=lambda w: np.full(len(w), 9.0, np.float32), threshold=1.0
    )
    feed = Feed(pipeline(old))
    opened = feed.block(5)
    assert [c.change.state for c in opened.changes] == ["open"]
    out = feed.pipeline.switch(FakeScorer("2", ["a"], 2), 0.0)
    # Reading 0's window is start-up padding, so it cannot raise the alarm: 4 flagged readings.
    assert [(c.model, c.change.state, c.change.readings) for c in out.changes] == [
        (old.ref, "close", 4)
    ]
    assert [(d.model, d.report.n) for d in out.drift] == [(old.ref, 5)]
    assert feed.pipeline.drift_report() is None, "the new model starts a fresh report"


def test_switching_to_a_model_the_source_cannot_feed_changes_nothing() -> None:
    old = FakeScorer("1", ["a"], 2)
    p = pipeline(old)
    with pytest.raises(ChannelMismatch, match=r"needs channels \['z'\]"):
        p.switch(FakeScorer("2", ["z"], 2), 0.0)
    assert p.scorer is old


def nan_after(calls: int) -> Callable[[F32], F32]:
    seen = itertools.count()

    def fn(windows: F32) -> F32:
        good = next(seen) < calls
        return (
            windows[:, -1, 0].astype(np.float32)
            if good
            else np.full(len(windows), np.nan, np.float32)
        )

    return fn


def explode(windows: F32) -> F32:
    raise RuntimeError("bad kernel")


@pytest.mark.parametrize(
    ("fn", "reason"),
    [(nan_after(1), "NaN or infinite"), (explode, "inference failed: RuntimeError: bad kernel")],
)
def test_a_failing_model_on_probation_hands_the_block_back_to_the_old_one(
    fn: Callable[[F32], F32], reason: str
) -> None:
    # The old model scores a window by its first reading (channel b): reading i's index if
    # the window really holds readings i-2..i.
    old = FakeScorer("1", ["b"], 3, fn=lambda w: w[:, 0, 0] - 1000 + 2)
    new = FakeScorer("2", ["a"], 4, fn=fn)
    feed = Feed(pipeline(old))
    feed.block(4)
    feed.switch(new, probation=ProbationPolicy(runs=5), tag="d-1")
    if fn is not explode:
        assert feed.block(3).rolled_back is None  # its first run is fine
    out = feed.block(3)
    assert out.rolled_back is not None
    assert (out.rolled_back.tag, out.rolled_back.failed, out.rolled_back.restored) == (
        "d-1",
        new.ref,
        old.ref,
    )
    assert reason in out.rolled_back.reason
    assert out.error == "" and feed.pipeline.scorer is old and not feed.pipeline.on_probation
    feed.block(2)
    batches = feed.flushed()
    assert sum(b.n for b in batches) == feed.fed
    failed_block = feed.fed - 5  # first reading of the block the new model failed on
    (holder,) = [b for b in batches if b.first <= failed_block < b.first + b.n]
    assert holder.model == old.ref
    scores = np.concatenate([b.scores for b in batches])
    assert np.isfinite(scores).all()
    # Both models score reading i as i (the new one from channel a): from reading 2 on (the
    # stream's first windows are padded) this holds only if the old model got real windows
    # again when it took over.
    np.testing.assert_array_equal(scores[2:], np.arange(2, feed.fed, dtype=np.float32))


def test_a_model_far_slower_than_its_manifest_is_rolled_back() -> None:
    old = FakeScorer("1", ["a"], 2)
    new = FakeScorer("2", ["a"], 2)  # manifest: p99 0.2 ms per 64 windows
    feed = Feed(pipeline(old))
    feed.block(10)
    feed.switch(new, probation=ProbationPolicy(runs=3), tag="d-2")
    slow = itertools.count(0.0, 0.006).__next__  # 6 ms per run of 10 readings
    assert feed.block(10, slow).rolled_back is None
    assert feed.block(10, slow).rolled_back is None
    out = feed.block(10, slow)
    assert out.rolled_back is not None and out.rolled_back.restored == old.ref
    assert "latency 0.6 ms per reading" in out.rolled_back.reason
    assert "manifest says 0.00313 ms per reading" in out.rolled_back.reason
    (cut,) = out.batches  # the new model's batch, cut where the old one takes over again
    assert (cut.model, cut.first, cut.n) == (new.ref, 10, 20)
    last = feed.flushed()[-1]
    assert (last.model, last.first, last.n) == (old.ref, 30, 10)


def test_tiny_runs_under_the_floor_never_count_as_slow() -> None:
    new = FakeScorer("2", ["a"], 2)
    feed = Feed(pipeline(FakeScorer("1", ["a"], 2)))
    feed.switch(new, probation=ProbationPolicy(runs=3), tag="d-3")
    quick = itertools.count(0.0, 0.004).__next__  # 4 ms a run: 64x the manifest, under 5 ms
    outs = [feed.block(1, quick) for _ in range(3)]
    assert [o.rolled_back for o in outs] == [None, None, None]
    assert [o.passed for o in outs] == ["", "", "d-3"]
    assert feed.pipeline.scorer is new and not feed.pipeline.on_probation


def test_after_probation_a_failing_model_is_reported_not_rolled_back() -> None:
    new = FakeScorer("2", ["a"], 2, fn=nan_after(2))
    feed = Feed(pipeline(FakeScorer("1", ["a"], 2)))
    feed.switch(new, probation=ProbationPolicy(runs=2), tag="d-4")
    assert feed.block(1).passed == "" and feed.block(1).passed == "d-4"
    out = feed.block(1)
    assert out.rolled_back is None and "NaN" in out.error
    assert feed.pipeline.scorer is new


def test_start_up_padding_never_raises_an_alarm_and_the_model_rule_decides_flags() -> None:
    """Windows padded at start-up look nothing like real ones; they are scored, not alarmed on.
    After that the model's alarm rule (here: open on 2 of 3, hold 3) gives the flags."""
    spiky = np.array([9, 9, 9, 0, 9, 0, 0, 9, 9, 0, 0, 0, 0, 0], np.float32)
    scorer = FakeScorer("1", ["a"], 3, fn=lambda w: spiky[w[:, -1, 0].astype(int)], threshold=1.0)
    scorer.manifest = msgspec.structs.replace(
        scorer.manifest, alarm=AlarmSpec(open_after=2, open_within=3, close_after=3)
    )
    feed = Feed(pipeline(scorer))
    for size in (2, 5, 7):
        feed.block(size)
    flags = np.concatenate([b.flags for b in feed.flushed()])
    # Readings 0 and 1 have padded windows; from reading 2 on: 9 at 2, 4 -> open at 4, ...
    assert flags.astype(int).tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]


def test_a_switched_in_model_with_real_history_can_alarm_at_once() -> None:
    old = FakeScorer("1", ["a"], 2)
    feed = Feed(pipeline(old))
    feed.block(6)
    hot = FakeScorer("2", ["a"], 4, fn=lambda w: np.full(len(w), 9.0, np.float32), threshold=1.0)
    feed.switch(hot)
    out = feed.block(3)
    assert [c.change.state for c in out.changes] == ["open"]
    assert out.changes[0].change.started == 6.0  # the first reading the new model scored
