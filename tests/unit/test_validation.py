"""Validating a recipe on labelled recordings: the flags a node would raise, counted."""

from __future__ import annotations

import numpy as np
import pytest

from cloud_hub.models.trainer import TrainConfig
from cloud_hub.models.validation import Counts, Labelled, flags_of, protocol, validate
from schemas.alarm import AlarmSpec
from tests.unit.test_trainer import CHANNELS, healthy


def recording(name: str, seed: int, fault: bool) -> Labelled:
    values = healthy(1000, seed=seed)
    labels = np.zeros(1000, dtype=bool)
    if fault:
        values[600:800, 1] += 1.5  # pressure leaves its correlation with the others
        labels[600:800] = True
    return Labelled(name, values, labels)


def test_counts_give_skab_f1_far_and_mar() -> None:
    counts = Counts().add(np.array([1, 1, 0, 0, 1], bool), np.array([1, 0, 1, 0, 1], bool))
    assert (counts.tp, counts.fp, counts.fn, counts.tn) == (2, 1, 1, 1)
    assert counts.f1() == pytest.approx(2 / 3)
    assert counts.far() == pytest.approx(0.5)
    assert counts.mar() == pytest.approx(1 / 3)
    assert Counts().f1() != Counts().f1()  # nothing counted: NaN, not a flattering number


def test_validate_pools_recordings_and_names_the_protocol() -> None:
    recordings = [recording("a", 1, True), recording("b", 2, True), recording("c", 3, False)]
    summary, per_file = validate(recordings, TrainConfig(), CHANNELS)
    assert sorted(per_file) == ["a", "b", "c"]
    assert summary.files == 3 and summary.readings == 3 * 600
    assert summary.protocol == protocol()
    assert summary.f1 > 0.8 and summary.far < 0.1
    assert per_file["c"].tp == 0 and per_file["c"].fn == 0


def test_flags_follow_the_alarm_rule() -> None:
    fault = recording("a", 1, True)
    held = flags_of(fault, TrainConfig(), CHANNELS)
    plain = flags_of(fault, TrainConfig(alarm=AlarmSpec()), CHANNELS)
    assert held.sum() >= plain.sum()  # the close-after hold only extends alarms


def test_too_short_a_recording_is_refused_by_name() -> None:
    short = Labelled("short.csv", healthy(300), np.zeros(300, bool))
    with pytest.raises(ValueError, match=r"short\.csv"):
        flags_of(short, TrainConfig(), CHANNELS)
