"""Sources: channel names, CSV read/write/replay, pacing, and the pump simulator."""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np
import pytest

from edge_node.sources import (
    CHANNELS,
    Block,
    CsvReplay,
    Fault,
    PumpSimulator,
    Source,
    SourceError,
    parse_fault,
)
from edge_node.sources.simulator import CHUNK, NOMINAL_MEAN, NOMINAL_SD, _Lag
from schemas.readings_csv import CsvFormatError, median, normalise_channel, read_csv, write_csv
from tests.skab import skab_file

WALL = 1_700_000_000.0


def drain(source: CsvReplay | PumpSimulator, now: float = 0.0) -> list[Block]:
    blocks = []
    while (block := source.poll(now)) is not None:
        blocks.append(block)
    return blocks


def small_csv(tmp_path: Path, n: int = 5, period: float = 1.0, name: str = "s.csv") -> Path:
    values = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    path = tmp_path / name
    write_csv(path, ["a", "b"], 1_600_000_000.0, period, values)
    return path


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("Volume Flow RateRMS", "volume_flow_raterms"),
        ("Accelerometer1RMS", "accelerometer1rms"),
        ("Temperature", "temperature"),
        ("  Pressure (bar) ", "pressure_bar"),
        ("__x--y__", "x_y"),
    ],
)
def test_normalise_channel(raw: str, expected: str) -> None:
    assert normalise_channel(raw) == expected


def test_replay_of_a_real_skab_file() -> None:
    path = skab_file("valve1/0.csv")
    with path.open(newline="") as handle:
        raw = list(csv.reader(handle, delimiter=";"))
    replay = CsvReplay([path], speed=0, wall_start=WALL)
    assert replay.channels == list(CHANNELS)
    assert replay.period == 1.0
    blocks = drain(replay)
    values = np.concatenate([b.values for b in blocks])
    assert replay.exhausted
    assert len(values) == len(raw) - 1
    assert values[0] == pytest.approx([float(x) for x in raw[1][1:9]], rel=1e-6)
    assert [b.t0 for b in blocks] == [WALL + 256 * i for i in range(len(blocks))]
    data = read_csv(path)
    assert data.anomaly is not None
    assert data.anomaly.sum() == sum(float(row[9]) == 1.0 for row in raw[1:])


def test_pacing_follows_now(tmp_path: Path) -> None:
    replay: Source = CsvReplay([small_csv(tmp_path, n=10, period=2.0)], wall_start=WALL)
    first = replay.poll(100.0)
    assert first is not None and first.n == 1 and first.t0 == WALL and first.period == 2.0
    assert replay.poll(100.0) is None
    assert replay.poll(101.9) is None
    second = replay.poll(102.0)
    assert second is not None and second.n == 1 and second.t0 == WALL + 2.0
    late = replay.poll(110.0)  # readings 2..5 are due by 100 + 5 * 2
    assert late is not None and late.n == 4 and late.t0 == WALL + 4.0
    assert late.values[:, 0].tolist() == [4.0, 6.0, 8.0, 10.0]


def test_speed_scales_pacing_and_max_block_caps(tmp_path: Path) -> None:
    replay = CsvReplay([small_csv(tmp_path, n=50)], speed=4.0, wall_start=WALL, max_block=3)
    assert replay.poll(10.0) is not None
    block = replay.poll(10.5)  # readings 1 and 2 are due at 10.25 and 10.5
    assert block is not None and block.n == 2
    capped = replay.poll(20.0)
    assert capped is not None and capped.n == 3
    assert capped.t0 == WALL + 3.0


def test_speed_zero_returns_max_block_until_exhausted(tmp_path: Path) -> None:
    replay = CsvReplay([small_csv(tmp_path, n=10)], speed=0, wall_start=WALL, max_block=4)
    sizes = [b.n for b in drain(replay)]
    assert sizes == [4, 4, 2]
    assert replay.exhausted
    assert replay.poll(1e9) is None


def test_loop_restarts_and_keeps_time_running(tmp_path: Path) -> None:
    replay = CsvReplay([small_csv(tmp_path, n=5)], speed=0, loop=True, wall_start=WALL, max_block=3)
    blocks = [replay.poll(0.0) for _ in range(4)]
    column = np.concatenate([b.values[:, 0] for b in blocks if b is not None])
    assert column.tolist() == [0, 2, 4, 6, 8, 0, 2, 4, 6, 8, 0, 2]
    assert [b.t0 for b in blocks if b is not None] == [WALL, WALL + 3, WALL + 6, WALL + 9]
    assert not replay.exhausted


def test_several_files_play_in_order(tmp_path: Path) -> None:
    first = small_csv(tmp_path, n=3, name="a.csv")
    second = small_csv(tmp_path, n=2, name="b.csv")
    replay = CsvReplay([first, second], speed=0, wall_start=WALL)
    values = np.concatenate([b.values for b in drain(replay)])
    assert values[:, 0].tolist() == [0, 2, 4, 0, 2]


def test_files_with_other_channels_are_refused(tmp_path: Path) -> None:
    first = small_csv(tmp_path, n=3)
    other = tmp_path / "other.csv"
    write_csv(other, ["a", "c"], 0.0, 1.0, np.zeros((3, 2), dtype=np.float32))
    with pytest.raises(SourceError, match=r"other\.csv"):
        CsvReplay([first, other], speed=0, wall_start=WALL)


def test_write_read_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    values = rng.normal(50, 20, size=(40, 3)).astype(np.float32)
    values[5, 1] = np.nan
    labels = rng.random(40) < 0.3
    path = tmp_path / "round.csv"
    write_csv(path, ["x", "y", "z"], 1_600_000_000.0, 1.0, values, anomaly=labels)
    data = read_csv(path)
    assert data.channels == ["x", "y", "z"]
    np.testing.assert_array_equal(data.values, values)  # NaN compares equal here
    np.testing.assert_array_equal(data.timestamps, 1_600_000_000.0 + np.arange(40))
    assert data.anomaly is not None and data.anomaly.tolist() == labels.tolist()
    assert path.read_text().splitlines()[1].startswith("2020-09-13 12:26:40;")


def test_sub_second_period_survives_a_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "fast.csv"
    write_csv(path, ["a"], 1_600_000_000.25, 0.1, np.ones((20, 1), dtype=np.float32))
    data = read_csv(path)
    assert data.period() == pytest.approx(0.1)
    assert data.timestamps[0] == pytest.approx(1_600_000_000.25)
    assert data.anomaly is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty file"),
        ("datetime;a\n", "no readings"),
        ("time;a\n2020-01-01 00:00:00;1\n", "no 'datetime' column"),
        ("datetime;anomaly\n2020-01-01 00:00:00;1\n", "no sensor columns"),
        ("datetime;a;A\n2020-01-01 00:00:00;1;2\n", "both normalise to 'a'"),
        ("datetime;a\n2020-01-01 00:00:00;1\n2020-01-01 00:00:01;x1\n", "line 3, column 'a'"),
        ("datetime;a\n2020-01-01 00:00:00;1\n2020-01-01 00:00:01;1;2\n", "line 3: 3 fields"),
        ("datetime;a\n2020-01-01 00:00:00;1\nyesterday;2\n", "line 3, column 'datetime'"),
        ("datetime;a\n2020-01-01 00:00:00;1\n;2\n", "line 3, column 'datetime'"),
    ],
)
def test_malformed_csv_names_file_and_place(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(CsvFormatError, match=r"bad\.csv") as caught:
        read_csv(path)
    assert message in str(caught.value)


def test_missing_file_and_unusable_period(tmp_path: Path) -> None:
    with pytest.raises(CsvFormatError, match=r"nope\.csv"):
        read_csv(tmp_path / "nope.csv")
    with pytest.raises(SourceError, match=r"nope\.csv"):
        CsvReplay([tmp_path / "nope.csv"], wall_start=WALL)
    single = tmp_path / "one.csv"
    single.write_text("datetime;a\n2020-01-01 00:00:00;1\n")
    with pytest.raises(SourceError, match=r"one\.csv: needs at least 2 readings"):
        CsvReplay([single], wall_start=WALL)
    with pytest.raises(SourceError, match="speed"):
        CsvReplay([small_csv(tmp_path)], speed=-1, wall_start=WALL)


def test_empty_cell_is_a_dropout(tmp_path: Path) -> None:
    path = tmp_path / "gap.csv"
    path.write_text("datetime;a;b\n2020-01-01 00:00:00;1;\n2020-01-01 00:00:01;2;3\n")
    values = read_csv(path).values
    assert np.isnan(values[0, 1]) and values[1].tolist() == [2.0, 3.0]


# --- simulator -------------------------------------------------------------------------------


def sim(seed: int = 7, faults: tuple[Fault, ...] = ()) -> PumpSimulator:
    return PumpSimulator(seed=seed, wall_start=WALL, faults=faults, speed=0)


def read_in(source: PumpSimulator, sizes: list[int]) -> np.ndarray:
    return np.concatenate([source.read(n).values for n in sizes])


def test_simulator_is_deterministic_however_it_is_polled() -> None:
    faults = (Fault("spike", "current", 100, 400), Fault("dropout", "voltage", 50, 30))
    total = 3 * CHUNK + 41
    whole = read_in(sim(faults=faults), [total])
    ones = read_in(sim(faults=faults), [1] * total)
    sevens = read_in(sim(faults=faults), [7] * (total // 7) + [total % 7])
    polled = PumpSimulator(seed=7, wall_start=WALL, faults=faults, speed=0, max_block=100)
    blocks = [polled.poll(0.0) for _ in range(9)]
    by_poll = np.concatenate([b.values for b in blocks if b is not None])[:total]
    for other in (ones, sevens, by_poll):
        np.testing.assert_array_equal(other, whole)
    assert not np.array_equal(read_in(sim(seed=8), [total]), read_in(sim(), [total]))


def test_simulator_pacing_and_timestamps() -> None:
    source: Source = PumpSimulator(seed=1, rate_hz=10.0, wall_start=WALL)
    assert source.channels == list(CHANNELS) and source.period == pytest.approx(0.1)
    first = source.poll(50.0)
    assert first is not None and first.n == 1 and first.t0 == WALL
    assert source.poll(50.05) is None
    block = source.poll(50.3)
    assert block is not None and block.n == 3 and block.t0 == pytest.approx(WALL + 0.1)
    assert not source.exhausted


def test_simulator_looks_like_skab_and_is_correlated() -> None:
    values = read_in(sim(seed=11), [6000]).astype(np.float64)
    assert not np.isnan(values).any()
    for i, name in enumerate(CHANNELS):
        assert abs(values[:, i].mean() - NOMINAL_MEAN[name]) < 1.5 * NOMINAL_SD[name], name
        assert 0.4 < values[:, i].std() / NOMINAL_SD[name] < 2.0, name
    corr = np.asarray(np.corrcoef(values.T))
    flow, current, temp = (
        CHANNELS.index(c) for c in ("volume_flow_raterms", "current", "temperature")
    )
    accel = CHANNELS.index("accelerometer1rms")
    assert corr[flow, accel] > 0.3 and corr[flow, current] > 0.1 and corr[flow, temp] < -0.3
    thermo = values[:, CHANNELS.index("thermocouple")]
    assert np.corrcoef(thermo[:-60], thermo[60:])[0, 1] > 0.9  # slow thermal dynamics


def fault_effect(fault: Fault, n: int = 700) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Faulted and healthy values of the fault's channel, and the fault window mask."""
    col = CHANNELS.index(fault.channel)
    faulty = sim(faults=(fault,))
    bad = read_in(faulty, [n])
    good = read_in(sim(), [n])
    others = [i for i in range(len(CHANNELS)) if i != col]
    np.testing.assert_array_equal(bad[:, others], good[:, others])
    return (
        bad[:, col].astype(np.float64),
        good[:, col].astype(np.float64),
        faulty.fault_labels(0, n),
    )


def test_drift_ramps_to_its_magnitude_inside_the_window_only() -> None:
    bad, good, inside = fault_effect(Fault("drift", "pressure", 260, 200, magnitude=4))
    assert inside.sum() == 200 and inside[260] and not inside[259] and not inside[460]
    np.testing.assert_array_equal(bad[~inside], good[~inside])
    offset = (bad - good)[inside] / NOMINAL_SD["pressure"]
    np.testing.assert_allclose(offset, 4 * np.arange(200) / 200, atol=1e-4)


def test_an_offset_ramps_up_then_stays_after_its_window() -> None:
    bad, good, inside = fault_effect(Fault("offset", "current", 260, 200, magnitude=4))
    assert inside.sum() == 200 and inside[260] and not inside[460]
    np.testing.assert_array_equal(bad[:260], good[:260])
    offset = (bad - good) / NOMINAL_SD["current"]
    np.testing.assert_allclose(offset[inside], 4 * np.arange(200) / 200, atol=1e-4)
    np.testing.assert_allclose(offset[460:], 4.0, atol=1e-4)  # the new normal holds
    assert parse_fault("offset:current:0:1:6") == Fault("offset", "current", 0, 1, 6)


def test_spikes_are_large_sparse_excursions() -> None:
    bad, good, inside = fault_effect(Fault("spike", "temperature", 300, 100, magnitude=6))
    np.testing.assert_array_equal(bad[~inside], good[~inside])
    jumps = np.abs(bad - good)[inside] / NOMINAL_SD["temperature"]
    hits = jumps > 1
    assert hits[0] and 5 <= hits.sum() <= 50
    np.testing.assert_allclose(jumps[hits], 6, rtol=1e-4)


def test_stuck_channel_repeats_the_value_before_the_window() -> None:
    bad, good, inside = fault_effect(Fault("stuck", "current", 255.5, 300))
    start = int(np.argmax(inside))
    assert start == 256  # the window straddles the simulator's internal chunk boundary
    np.testing.assert_array_equal(bad[inside], np.full(300, np.float32(good[start - 1])))
    np.testing.assert_array_equal(bad[~inside], good[~inside])
    assert np.unique(good[inside]).size > 100


def test_dropout_reads_nan_in_the_window() -> None:
    bad, good, inside = fault_effect(Fault("dropout", "voltage", 10, 5))
    assert np.isnan(bad[inside]).all() and inside.sum() == 5
    np.testing.assert_array_equal(bad[~inside], good[~inside])


def test_parse_fault() -> None:
    assert parse_fault("drift:pressure:60:120:4") == Fault("drift", "pressure", 60, 120, 4)
    assert parse_fault("stuck:Volume Flow RateRMS:0:5") == Fault(
        "stuck", "volume_flow_raterms", 0, 5
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("drift:pressure:60", "expected kind:channel:start_s:duration_s"),
        ("melt:pressure:60:10", "kind 'melt'"),
        ("drift:torque:60:10", "channel 'torque'"),
        ("drift:pressure:soon:10", "start_s 'soon'"),
        ("drift:pressure:60:0", "duration_s must be"),
        ("drift:pressure:-1:10", "start_s must be"),
        ("spike:pressure:1:10:inf", "magnitude must be finite"),
    ],
)
def test_parse_fault_errors_name_the_problem(text: str, message: str) -> None:
    with pytest.raises(SourceError, match=re.escape(f"fault '{text}'")) as caught:
        parse_fault(text)
    assert message in str(caught.value)


def test_simulator_rejects_bad_parameters() -> None:
    with pytest.raises(SourceError, match="rate_hz"):
        PumpSimulator(seed=1, rate_hz=0, wall_start=WALL)
    with pytest.raises(SourceError, match="max_block"):
        PumpSimulator(seed=1, wall_start=WALL, max_block=0)


def test_start_sets_pacing_origin_and_first_timestamp() -> None:
    """Readings are stamped from when the node starts its loop, not from construction."""
    sim = PumpSimulator(seed=1, rate_hz=10.0, speed=1.0, wall_start=1000.0)
    sim.start(50.0, 2000.0)
    assert sim.poll(49.0) is None
    first = sim.poll(50.0)
    assert first is not None and first.t0 == 2000.0 and first.n == 1
    later = sim.poll(50.35)
    assert later is not None and later.t0 == pytest.approx(2000.1) and later.n == 3


@pytest.mark.parametrize("a", [0.999, 0.98, 0.5, 1e-3, 0.0])
def test_a_lag_laid_out_from_its_first_column_gives_the_whole_matrixs_products(a: float) -> None:
    # The simulator keeps one column of each lag's Toeplitz matrix: the readings must be the
    # very numbers the matrix held whole gave.
    steps = np.subtract.outer(np.arange(CHUNK), np.arange(CHUNK))
    whole = np.where(steps >= 0, a ** np.maximum(steps, 0).astype(np.float64), 0.0)
    carry = a ** np.arange(1, CHUNK + 1, dtype=np.float64)
    drive = np.random.default_rng(2).standard_normal(CHUNK)
    lag = _Lag(a)
    assert lag._matrix is None
    got = lag.run(0.25, drive, np.empty((CHUNK, CHUNK)))
    np.testing.assert_array_equal(got, whole @ drive + carry * 0.25)


def test_the_median_step_is_numpys_median() -> None:
    rng = np.random.default_rng(8)
    for n in (1, 2, 3, 10, 11, 3000):
        steps = np.round(rng.random(n) * 4, 1) / 3  # ties, and means of two that round
        assert median(steps) == float(np.median(steps))
    with_nan = np.array([0.5, np.nan, 0.2])
    assert math.isnan(median(with_nan)) and math.isnan(median(np.empty(0)))
