"""Drift statistics: binning, PSI, per-channel shift, score statistics, bounded memory."""

from __future__ import annotations

import math

import numpy as np
import pytest
from numpy.typing import NDArray

from edge_node.scoring.drift import (
    DriftAccumulator,
    DriftReport,
    _Binner,
    bin_counts,
    chi2_sf,
    effective_n,
    psi,
)
from schemas.drift import Cusum, DriftSpec, decorrelation_s, fit_thresholds
from schemas.manifest import Profile, ReferenceProfile

MEANS = np.array([10.0, -3.0, 200.0])
STDS = np.array([2.0, 0.5, 15.0])
NAMES = ["a", "b", "c"]


def make_profile(sample: NDArray[np.float64], bins: int = 10) -> Profile:
    """Quantile edges and fractions of a sample, as a trainer would build them."""
    edges = np.quantile(sample, np.linspace(0, 1, bins + 1)).tolist()
    counts = bin_counts(sample, edges)
    return Profile(
        mean=float(sample.mean()),
        std=float(sample.std()),
        edges=edges,
        fractions=(counts / counts.sum()).tolist(),
    )


def make_reference(seed: int = 0) -> ReferenceProfile:
    rng = np.random.default_rng(seed)
    sample = rng.normal(MEANS, STDS, size=(20_000, 3))
    scores = rng.gamma(2.0, 0.5, size=20_000)
    return ReferenceProfile(
        channels={name: make_profile(sample[:, i]) for i, name in enumerate(NAMES)},
        score=make_profile(scores),
    )


def healthy(n: int, seed: int) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    rng = np.random.default_rng(seed)
    values = rng.normal(MEANS, STDS, size=(n, 3)).astype(np.float32)
    scores = rng.gamma(2.0, 0.5, size=n).astype(np.float32)
    return values, scores


def test_bin_counts_outer_bins_are_open_ended() -> None:
    edges = [0.0, 1.0, 2.0, 3.0]
    values = np.array([-50, 0, 0.5, 1.0, 1.5, 2.0, 2.99, 3.0, 99, np.nan])
    assert bin_counts(values, edges).tolist() == [3, 2, 4]
    assert bin_counts(np.array([]), edges).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match="edges needs at least 2"):
        bin_counts(values, [1.0])


def test_psi_properties() -> None:
    expected = [0.25, 0.25, 0.25, 0.25]
    assert psi(expected, np.array([25, 25, 25, 25])) == pytest.approx(0.0, abs=1e-12)
    mild = psi(expected, np.array([30, 25, 25, 20]))
    strong = psi(expected, np.array([70, 20, 10, 0]))
    assert 0 < mild < strong
    # an empty bin is floored, not infinite
    assert math.isfinite(psi([0.5, 0.5, 0.0], np.array([10, 10, 5])))
    assert math.isnan(psi(expected, np.zeros(4, dtype=np.int64)))
    with pytest.raises(ValueError, match="3 counts for 4 expected"):
        psi(expected, np.array([1, 2, 3]))


def test_reference_data_shows_no_drift_and_a_shift_shows() -> None:
    reference = make_reference()
    values, scores = healthy(5_000, seed=1)
    values[:, 2] += 2 * STDS[2]
    acc = DriftAccumulator(reference, NAMES)
    for start in range(0, 5_000, 700):
        stop = start + 700
        acc.add(100.0 + start, 1.0, values[start:stop], scores[start:stop], scores[start:stop] > 2)
    report = acc.report()
    assert report is not None
    a, b, c = report.channels
    assert a.psi < 0.1 and b.psi < 0.1 and report.score.psi < 0.1
    assert abs(a.mean_shift_sd) < 0.1 and abs(b.mean_shift_sd) < 0.1
    assert c.psi > 0.25
    assert c.mean_shift_sd == pytest.approx(2.0, abs=0.1)
    assert c.mean == pytest.approx(float(values[:, 2].astype(np.float64).mean()), rel=1e-9)
    assert c.std == pytest.approx(float(values[:, 2].astype(np.float64).std()), rel=1e-6)
    assert (report.start, report.end, report.n) == (100.0, 100.0 + 4_999, 5_000)


def test_score_stats() -> None:
    acc = DriftAccumulator(make_reference(), NAMES)
    values, scores = healthy(3_000, seed=2)
    flags = scores > 2.0
    acc.add(0.0, 0.5, values, scores, flags)
    report = acc.report()
    assert report is not None
    s = scores.astype(np.float64)
    assert report.score.mean == pytest.approx(s.mean())
    p50, p95, p99 = np.percentile(s, [50, 95, 99])
    assert (report.score.p50, report.score.p95, report.score.p99) == pytest.approx((p50, p95, p99))
    assert report.score.flagged_fraction == pytest.approx(flags.mean())
    assert report.end == pytest.approx(0.5 * 2_999)


def test_percentiles_use_a_bounded_systematic_sample() -> None:
    acc = DriftAccumulator(make_reference(), NAMES, score_cap=1_000)
    values, scores = healthy(10_000, seed=3)
    start = 0
    for size in [1, 333, 4_000, 17, 5_649]:
        part = slice(start, start + size)
        acc.add(float(start), 1.0, values[part], scores[part], np.zeros(size, bool))
        start += size
    report = acc.report()
    assert report is not None
    # 10,000 scores over a cap of 1,000: every 16th is kept, whatever the block sizes
    every_16th = scores[::16].astype(np.float64)
    assert report.score.p50 == pytest.approx(float(np.percentile(every_16th, 50)))
    assert report.score.p99 == pytest.approx(float(np.percentile(every_16th, 99)))
    assert report.score.mean == pytest.approx(float(scores.astype(np.float64).mean()), rel=1e-6)


def test_nan_cells_are_ignored_per_channel() -> None:
    acc = DriftAccumulator(make_reference(), NAMES)
    values = np.array([[1.0, np.nan, 3.0], [3.0, -3.0, np.nan]], dtype=np.float32)
    acc.add(0.0, 1.0, values, np.array([0.1, np.nan], np.float32), np.array([False, True]))
    report = acc.report()
    assert report is not None
    assert [ch.mean for ch in report.channels] == [2.0, -3.0, 3.0]
    assert [ch.std for ch in report.channels] == pytest.approx([1.0, 0.0, 0.0])
    assert report.score.mean == pytest.approx(0.1) and report.score.flagged_fraction == 0.5


def test_report_resets_and_is_none_when_empty() -> None:
    acc = DriftAccumulator(make_reference(), NAMES)
    assert acc.report() is None
    values, scores = healthy(10, seed=4)
    acc.add(5.0, 1.0, values, scores, np.zeros(10, bool))
    first = acc.report()
    assert first is not None and first.n == 10
    assert acc.report() is None
    acc.add(50.0, 1.0, values[:3], scores[:3], np.ones(3, bool))
    second = acc.report()
    assert second is not None
    assert (second.start, second.n, second.score.flagged_fraction) == (50.0, 3, 1.0)


def test_constant_reference_channel_gives_a_finite_shift() -> None:
    reference = make_reference()
    flat = Profile(mean=5.0, std=0.0, edges=[4.0, 5.0, 6.0], fractions=[0.0, 1.0])
    reference.channels["a"] = flat
    acc = DriftAccumulator(reference, NAMES)
    values, scores = healthy(10, seed=5)
    values[:, 0] = 5.5
    acc.add(0.0, 1.0, values, scores, np.zeros(10, bool))
    report = acc.report()
    assert report is not None
    shift = report.channels[0].mean_shift_sd
    assert math.isfinite(shift) and shift > 1_000


def test_bad_setup_and_input_are_refused() -> None:
    reference = make_reference()
    with pytest.raises(ValueError, match="channel\\(s\\) pressure missing"):
        DriftAccumulator(reference, ["a", "pressure"])
    reference.channels["b"] = Profile(mean=0.0, std=1.0, edges=[0.0, 1.0], fractions=[0.5, 0.5])
    with pytest.raises(ValueError, match="reference profile 'b': 2 edges for 2 fractions"):
        DriftAccumulator(reference, NAMES)
    acc = DriftAccumulator(make_reference(), NAMES)
    with pytest.raises(ValueError, match=r"expected \[n, 3\]"):
        acc.add(0.0, 1.0, np.zeros((2, 2)), np.zeros(2), np.zeros(2, bool))
    with pytest.raises(ValueError, match="2 readings, 3 scores and 2 flags"):
        acc.add(0.0, 1.0, np.zeros((2, 3)), np.zeros(3), np.zeros(2, bool))


def _report(acc: DriftAccumulator) -> DriftReport:
    report = acc.report()
    assert report is not None
    return report


def test_psi_is_judged_against_its_null_for_the_sample_size() -> None:
    reference = make_reference()
    values, scores = healthy(2_000, seed=6)
    values[:, 2] += 0.5 * STDS[2]
    acc = DriftAccumulator(reference, NAMES)
    acc.add(0.0, 1.0, values, scores, np.zeros(2_000, bool))
    a, _, c = _report(acc).channels
    # healthy: PSI of the order of its null expectation (9 dof / n), p-value not small
    assert a.n_eff == pytest.approx(2_000, rel=0.1)
    assert a.psi_null == pytest.approx(9 / a.n_eff)
    assert a.psi < 4 * a.psi_null and a.psi_p > 1e-3
    # half an SD shift: a tiny p-value, KS and Wasserstein of the size of the shift
    assert c.psi_p < 1e-9
    assert 0.15 < c.ks < 0.25
    # Wasserstein over the inner bins (10 %..90 % of the reference) bounds the shift from below
    assert 0.3 < c.wasserstein_sd <= 0.5
    assert a.wasserstein_sd < 0.1
    assert sum(c.counts) == 2_000 and len(c.counts) == 10


def test_autocorrelated_readings_count_as_fewer() -> None:
    rng = np.random.default_rng(7)
    # AR(1) with r = 0.99 and the reference's marginal distribution
    r, n = 0.99, 3_000
    x = np.zeros((n, 3))
    shocks = rng.standard_normal((n, 3)) * math.sqrt(1 - r * r)
    for t in range(1, n):
        x[t] = r * x[t - 1] + shocks[t]
    values = (MEANS + STDS * x).astype(np.float32)
    acc = DriftAccumulator(make_reference(), NAMES)
    acc.add(0.0, 1.0, values, healthy(n, 8)[1], np.zeros(n, bool))
    a = _report(acc).channels[0]
    assert a.n_eff == pytest.approx(n * (1 - r) / (1 + r), rel=0.5)
    assert effective_n(100, 0.0) == 100 and effective_n(100, 1.0) == 1.0
    assert chi2_sf(9.0, 9) == pytest.approx(0.437, abs=0.01)  # scipy.stats.chi2.sf(9, 9)


def test_the_change_detector_alarms_after_a_shift_at_any_rate() -> None:
    reference = make_reference()
    spec = DriftSpec(k=3.0, default_h=90.0)
    for rate in (1.0, 10.0):
        acc = DriftAccumulator(reference, NAMES, spec=spec)
        n = int(30 * rate)  # 30 s intervals
        period = 1 / rate
        values, scores = healthy(8 * n, seed=9)
        shifted = values.copy()
        shifted[3 * n :, 1] += 5 * STDS[1]  # from 90 s on, +5 SD: S grows by ~2 SD per s
        changes = []
        for i in range(8):
            part = slice(i * n, (i + 1) * n)
            acc.add(i * 30.0, period, shifted[part], scores[part], np.zeros(n, bool))
            changes.append(_report(acc).channels[1])
        assert not any(c.alarm for c in changes[:3]) and max(c.change for c in changes[:3]) < 0.1
        # 90 SD*s at ~2 SD per s: the alarm comes in the second interval of the shift
        assert changes[3].change == pytest.approx(60 / 90, abs=0.2) and not changes[3].alarm
        assert changes[4].change == pytest.approx(120 / 90, abs=0.25)
        assert all(c.alarm for c in changes[4:])


def test_block_sizes_do_not_change_the_report() -> None:
    values, scores = healthy(1_000, seed=10)
    values[500:, 0] += 4 * STDS[0]
    spec = DriftSpec(k=1.0, default_h=50.0)
    whole = DriftAccumulator(make_reference(), NAMES, spec=spec)
    whole.add(0.0, 1.0, values, scores, np.zeros(1_000, bool))
    single = DriftAccumulator(make_reference(), NAMES, spec=spec)
    for i in range(1_000):
        single.add(float(i), 1.0, values[i : i + 1], scores[i : i + 1], np.zeros(1, bool))
    a, b = _report(whole), _report(single)
    for x, y in zip(a.channels, b.channels, strict=True):
        assert x.counts == y.counts
        assert x.change == pytest.approx(y.change) and x.n_eff == pytest.approx(y.n_eff)
    assert a.channels[0].alarm


def test_counts_of_intervals_add_up() -> None:
    values, scores = healthy(900, seed=11)
    acc = DriftAccumulator(make_reference(), NAMES)
    parts = []
    for i in range(3):
        acc.add(
            i * 300.0,
            1.0,
            values[i * 300 : (i + 1) * 300],
            scores[i * 300 : (i + 1) * 300],
            np.zeros(300, bool),
        )
        parts.append(_report(acc))
    acc.add(0.0, 1.0, values, scores, np.zeros(900, bool))
    whole = _report(acc)
    for c in range(3):
        merged = np.sum([p.channels[c].counts for p in parts], axis=0)
        assert merged.tolist() == whole.channels[c].counts
    assert np.sum([p.score.counts for p in parts], axis=0).tolist() == whole.score.counts


def test_the_score_detector_looks_upwards_only() -> None:
    values, scores = healthy(600, seed=12)
    spec = DriftSpec(k=1.0, default_h=20.0)
    low = DriftAccumulator(make_reference(), NAMES, spec=spec)
    low.add(0.0, 1.0, values, scores * 0.0, np.zeros(600, bool))
    high = DriftAccumulator(make_reference(), NAMES, spec=spec)
    high.add(0.0, 1.0, values, scores + 5.0, np.zeros(600, bool))
    assert not _report(low).score.alarm
    assert _report(high).score.alarm


def test_thresholds_are_fitted_on_healthy_readings_and_hold_on_them() -> None:
    rng = np.random.default_rng(13)
    z = rng.standard_normal((20_000, 3))
    z[5_000:5_100, 1] += 4.0  # one healthy excursion the training data shows
    thresholds = fit_thresholds(z, ["a", "b", "score"], 0.5, k=3.0, margin=1.5)
    assert set(thresholds) == {"a", "b", "score"}
    assert thresholds["a"] == 30.0  # the floor: ten seconds of k beyond the allowance
    assert thresholds["b"] == pytest.approx(1.5 * 0.5 * 100, rel=0.2)  # ~1 SD*s per reading
    # the same readings never alarm under their own thresholds
    cusum = Cusum(3, 3.0)
    cusum.add(z, 0.5)
    assert (cusum.peak.max(axis=0) < np.array(list(thresholds.values()))).all()
    spec = DriftSpec(thresholds=thresholds)
    assert spec.h("b") == thresholds["b"] and spec.h("other") == spec.default_h
    with pytest.raises(ValueError, match="must be > 0 \\(not for a\\)"):
        DriftSpec(thresholds={"a": 0.0})


def test_slow_channels_get_thresholds_of_their_time_scale() -> None:
    rng = np.random.default_rng(14)
    n, r = 20_000, 0.99  # AR(1): autocorrelation 1/e after ~100 readings
    slow = np.zeros(n)
    shocks = rng.standard_normal(n) * math.sqrt(1 - r * r)
    for t in range(1, n):
        slow[t] = r * slow[t - 1] + shocks[t]
    z = np.column_stack([rng.standard_normal(n), slow, rng.standard_normal(n)])
    assert decorrelation_s(z, 2.0)[1] == pytest.approx(200.0, rel=0.25)
    thresholds = fit_thresholds(z, ["fast", "slow", "score"], 2.0, k=3.0, margin=1.0)
    assert thresholds["fast"] == 30.0 and thresholds["slow"] >= 3.0 * 150


def test_chunks_summed_together_match_chunks_summed_one_by_one() -> None:
    # The accumulator sums buffered chunks in one pass; the result must be the very same
    # numbers (not merely close) as adding the chunks one at a time.
    rng = np.random.default_rng(3)
    z = rng.normal(0.5, 1.5, size=(5, 128, 4))
    z[1, 7, 2] = np.nan
    z[3, 0, 0] = np.inf
    together, apart = Cusum(4, 0.5), Cusum(4, 0.5)
    together.add_chunks(z, 0.1)
    for chunk in z:
        apart.add(chunk, 0.1)
    np.testing.assert_array_equal(together.state, apart.state)
    np.testing.assert_array_equal(together.peak, apart.peak)


def test_reports_are_identical_for_any_block_size_and_edge_order() -> None:
    values, scores = healthy(3_000, seed=11)
    values[100:130, 1] = np.nan
    values[2_000:, 2] += 3 * STDS[2]
    reference = make_reference()
    unsorted = make_profile(values[:, 0].astype(np.float64))
    unsorted.edges[3], unsorted.edges[4] = unsorted.edges[4], unsorted.edges[3]
    shuffled = ReferenceProfile(
        channels={**reference.channels, "a": unsorted}, score=reference.score
    )
    for ref in (reference, shuffled):
        reports = []
        for block in (1, 37, 128, 1_000, 3_000):
            acc = DriftAccumulator(ref, NAMES, spec=DriftSpec(k=1.0, default_h=50.0))
            for i in range(0, 3_000, block):
                n = min(block, 3_000 - i)
                acc.add(float(i), 1.0, values[i : i + n], scores[i : i + n], np.zeros(n, bool))
            reports.append(_report(acc))
        assert all(r == reports[0] for r in reports[1:])
    # With edges out of order a value's bin is the number of inner edges at or below it.
    below = (np.asarray(unsorted.edges[1:-1])[None, :] <= values[:, :1]).sum(axis=1)
    assert reports[0].channels[0].counts == np.bincount(below, minlength=10).tolist()


@pytest.mark.parametrize("shift", [0.0, 6.0, -6.0, 40.0])
def test_columns_as_rows_give_the_same_sums_as_rows(shift: float) -> None:
    # add_columns takes shortcuts (no running sums for a column that never rises, none of the
    # bounding when every value is finite, all columns at once when all rise): the very same
    # numbers as add, whichever columns rise.
    rng = np.random.default_rng(21)
    z = rng.normal(shift, 1.0, size=(300, 5))
    z[:, 0] = rng.normal(0.0, 0.5, size=300)  # never beyond k either way
    for gaps in (False, True):
        if gaps:
            z[4, 1], z[9, 2], z[20, 3] = np.nan, np.inf, -np.inf
        rows, columns = Cusum(5, 3.0), Cusum(5, 3.0)
        for start in range(0, 300, 100):
            rows.add(z[start : start + 100], 0.1)
            columns.add_columns(np.ascontiguousarray(z[start : start + 100].T), 0.1)
        np.testing.assert_array_equal(columns.state, rows.state)
        np.testing.assert_array_equal(columns.peak, rows.peak)


def test_binary_search_bins_as_the_edge_count_does() -> None:
    # Edges in order are searched, others counted one by one: the same bins either way,
    # values on an edge, beyond the outer ones, infinite or missing included.
    rng = np.random.default_rng(17)
    sample = rng.normal(0.0, 1.0, 5_000)
    profiles = [make_profile(sample, bins) for bins in (10, 4, 1)]
    x = rng.normal(0.0, 1.5, size=(3, 700))
    x[0, :9] = profiles[0].edges[1:-1]
    x[1, :3] = [np.inf, -np.inf, np.nan]
    x[2, 5] = np.nan
    searched, counted = _Binner(profiles), _Binner(profiles)
    counted._sorted = False
    a, b = searched.zero(), counted.zero()
    searched.add(x, a)
    counted.add(x, b)
    np.testing.assert_array_equal(a, b)
    assert searched._sorted and a.sum() == x.size - 2
