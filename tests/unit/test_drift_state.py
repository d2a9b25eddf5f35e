"""The hub's drift state of a node: ok, watch or drifting, naming the channel and statistic,
and its bounded metric."""

from __future__ import annotations

import msgspec

from cloud_hub.ingest.drift_state import drift_state
from schemas.messages import ChannelDrift, Drift, ScoreStats
from schemas.samples import SAMPLES
from tests.unit.test_fleet_metrics import hub, msg, send, value


def channel(name: str, change: float, shift: float = 0.0) -> ChannelDrift:
    return ChannelDrift(
        channel=name,
        psi=0.0,
        mean_shift_sd=shift,
        mean=0.0,
        std=1.0,
        ks=0.3,
        change=change,
        alarm=change >= 1.0,
    )


def score(change: float = 0.0) -> ScoreStats:
    return ScoreStats(
        mean=1.0,
        p50=1.0,
        p95=2.0,
        p99=3.0,
        flagged_fraction=0.0,
        psi=0.0,
        change=change,
        alarm=change >= 1.0,
    )


def drift(channels: list[ChannelDrift], score_stats: ScoreStats | None = None) -> Drift:
    sample = SAMPLES["drift"]
    assert isinstance(sample, Drift)
    return msgspec.structs.replace(sample, channels=channels, score=score_stats or score())


def test_levels_and_reasons() -> None:
    ok = drift_state(drift([channel("pressure", 0.2), channel("current", 0.1)]))
    assert (ok.level, ok.channel) == ("ok", "")
    watch = drift_state(drift([channel("pressure", 0.7, 2.1), channel("current", 0.1)]))
    assert (watch.level, watch.channel) == ("watch", "pressure")
    assert "pressure: CUSUM 0.70" in watch.reason and "mean +2.1 SD" in watch.reason
    bad = drift_state(drift([channel("pressure", 0.7), channel("thermocouple", 1.4, -3.5)]))
    assert (bad.level, bad.channel) == ("drifting", "thermocouple")
    assert "mean -3.5 SD" in bad.reason
    by_score = drift_state(drift([channel("pressure", 0.1)], score(2.0)))
    assert (by_score.level, by_score.channel) == ("drifting", "score")


def test_reports_without_the_detector_read_ok() -> None:
    # A node from before the change detector sends change = 0 everywhere (the defaults).
    sample = SAMPLES["drift"]
    assert isinstance(sample, Drift) and sample.channels[0].change == 0.0
    assert drift_state(sample).level == "ok"


def test_state_metric_is_one_hot_per_node() -> None:
    ingest, registry, _ = hub()
    send(ingest, msg("drift", "pump-3", channels=[channel("pressure", 1.5)]))
    send(ingest, msg("drift", "pump-1", channels=[channel("pressure", 0.6)]))
    for node, level in (("pump-3", "drifting"), ("pump-1", "watch")):
        for state in ("ok", "watch", "drifting"):
            got = value(registry, "edgeml_drift_state", node=node, state=state)
            assert got == (1.0 if state == level else 0.0)
