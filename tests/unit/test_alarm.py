"""The alarm rule: k-of-n to open, m quiet to close, the same flags whatever the blocks."""

from __future__ import annotations

import msgspec
import numpy as np
import pytest

from schemas.alarm import AlarmFilter, AlarmSpec, apply, openings


def reference(spec: AlarmSpec, hits: list[bool]) -> list[bool]:
    """The rule as written in the module docstring, one reading at a time."""
    flags, is_open, quiet = [], False, 0
    for i, hit in enumerate(hits):
        recent = hits[max(0, i - spec.open_within + 1) : i + 1]
        if is_open:
            quiet = 0 if hit else quiet + 1
            is_open = quiet < spec.close_after
        elif sum(recent) >= spec.open_after:
            is_open, quiet = True, 0
        flags.append(is_open)
    return flags


SPECS = [
    AlarmSpec(),
    AlarmSpec(close_after=30),
    AlarmSpec(open_after=3, open_within=3),
    AlarmSpec(open_after=2, open_within=5, close_after=4),
    AlarmSpec(open_after=3, open_within=8, close_after=2),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: s.describe())
@pytest.mark.parametrize("seed", range(5))
def test_blocks_give_the_flags_of_the_rule(spec: AlarmSpec, seed: int) -> None:
    rng = np.random.default_rng(seed)
    # Bursty exceedances, as anomalies are: runs of hits and of quiet readings.
    hits = np.repeat(rng.random(200) < 0.3, rng.integers(1, 12, 200))[:1500]
    expected = reference(spec, hits.tolist())
    assert apply(spec, hits).tolist() == expected
    alarm = AlarmFilter(spec)
    cuts = np.sort(rng.choice(np.arange(1, hits.size), 40, replace=False))
    blocks = [alarm.update(part) for part in np.split(hits, cuts)]
    assert np.concatenate(blocks).tolist() == expected


def test_persistence_ignores_a_single_spike_and_hysteresis_holds() -> None:
    spec = AlarmSpec(open_after=3, open_within=3, close_after=4)
    hits = [0, 1, 0, 0, 1, 1, 1, 0, 1, 0, 0, 0, 0, 0]
    flags = apply(spec, hits).astype(int).tolist()
    assert flags == [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0]
    assert openings(flags).tolist() == [6]


def test_default_flags_exactly_the_exceedances() -> None:
    hits = np.array([0, 1, 1, 0, 1], dtype=bool)
    assert apply(AlarmSpec(), hits).tolist() == hits.tolist()
    assert AlarmFilter(AlarmSpec()).update([]).size == 0


def test_bad_specs_are_refused_naming_the_field() -> None:
    with pytest.raises(ValueError, match="open_after"):
        AlarmSpec(open_after=4, open_within=3)
    with pytest.raises(msgspec.ValidationError, match="close_after"):
        msgspec.json.decode(b'{"close_after": 0}', type=AlarmSpec)
