"""Behaviour figures at the hub: only watched nodes, per model version and time window."""

from __future__ import annotations

import math

import numpy as np

from cloud_hub.ingest.behaviour import Behaviour
from schemas.messages import Ack, Event, ModelRef, Percentiles, ResultBatch, Telemetry
from schemas.packing import pack_f32, pack_flags

V1, V2 = ModelRef("pump", "1"), ModelRef("pump", "2")


def batch(node: str, model: ModelRef, scores: list[float], threshold: float = 1.0) -> ResultBatch:
    values = np.asarray(scores, dtype=np.float32)
    return ResultBatch(
        node=node, boot="b", seq=0, ts=0.0, model=model, first=0, t0=0.0, period=0.1,
        n=len(scores), threshold=threshold, scores=pack_f32(values),
        flags=pack_flags(values > threshold),
    )  # fmt: skip


def telemetry(node: str, p99: float, errors: int) -> Telemetry:
    return Telemetry(
        node=node, boot="b", seq=1, ts=0.0, interval_s=1.0, readings=10, readings_per_s=10.0,
        latency_ms=Percentiles(1.0, 1.0, p99, p99), rss_bytes=1, cpu_percent=1.0, power_w=1.0,
        power_method="model", outbox_depth=0, outbox_bytes=0, dropped=0,
        errors={"model": errors}, model=V2,
    )  # fmt: skip


def test_only_watched_nodes_are_accumulated() -> None:
    behaviour = Behaviour()
    behaviour.watch("a", horizon_s=60)
    behaviour.observe(batch("a", V1, [0.5, 2.0]), now=10.0)
    behaviour.observe(batch("b", V1, [0.5, 2.0]), now=10.0)
    assert behaviour.window("a", "1", 0, 20).readings == 2
    assert behaviour.window("b", "1", 0, 20).readings == 0
    assert behaviour.watched == 1


def test_figures_are_per_version_and_window() -> None:
    behaviour = Behaviour()
    behaviour.watch("a", horizon_s=60)
    behaviour.observe(batch("a", V1, [0.1, 0.2, 3.0, math.nan]), now=5.0)
    behaviour.observe(batch("a", V2, [5.0, 5.0]), now=25.0)
    old = behaviour.window("a", "1", 0, 20)
    assert (old.readings, old.flagged, old.unscored) == (4, 1, 1)
    assert sum(old.counts) == 3  # NaN is not in the histogram
    assert math.isclose(old.flag_rate, 1 / 3)
    new = behaviour.window("a", "2", 20, 30)
    assert (new.readings, new.flagged) == (2, 2)
    assert behaviour.window("a", "2", 0, 20).readings == 0


def test_episodes_latency_errors_and_probation_rollbacks() -> None:
    behaviour = Behaviour()
    behaviour.watch("a", horizon_s=60)
    behaviour.observe(telemetry("a", p99=2.0, errors=3), now=1.0)  # errors since boot: a base
    behaviour.observe(telemetry("a", p99=6.0, errors=5), now=2.0)
    event = Event(
        node="a", boot="b", seq=2, ts=0.0, model=V2, episode=1, state="open", started=0.0,
        severity="warning", peak_score=2.0, threshold=1.0, readings=3,
    )  # fmt: skip
    behaviour.observe(event, now=3.0)
    failed = Ack(
        node="a", boot="b", seq=3, ts=0.0, command="c", command_type="deploy", status="failed",
        reason="rolled back to pump@1: NaN scores", model=V2,
    )  # fmt: skip
    behaviour.observe(failed, now=4.0)
    figures = behaviour.window("a", "2", 0, 10)
    assert figures.latency_p99_ms == 4.0  # the mean of the reports' p99
    assert figures.errors == 2
    assert figures.episodes == 1
    assert figures.probation_rollbacks == 1


def test_memory_is_bounded_by_the_horizon() -> None:
    behaviour = Behaviour()
    behaviour.watch("a", horizon_s=32)
    for second in range(1000):
        behaviour.observe(batch("a", V1, [0.5]), now=float(second))
        behaviour.prune(float(second))
    kept = behaviour.window("a", "1", 0, 1000)
    assert 30 <= kept.readings <= 34  # about the horizon's worth, whatever ran before
    behaviour.unwatch(["a"])
    assert behaviour.watched == 0
