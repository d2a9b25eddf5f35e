"""Waves from a waves spec: cumulative, at least one node each, the last completes the set."""

from __future__ import annotations

import pytest

from cloud_hub.rollouts.plan import PlanError, parse_waves, plan_waves, select_group

NODES = [f"pump-{i:02d}" for i in range(1, 21)]


@pytest.mark.parametrize(
    ("spec", "total", "sizes"),
    [
        ("1,10%,50%,100%", 20, [1, 1, 8, 10]),
        ("1,10%,50%,100%", 3, [1, 1, 1]),  # 10% of 3 rounds up to 1: at least one more
        ("1,10%,50%,100%", 1, [1]),
        ("1,10%,50%,100%", 100, [1, 9, 40, 50]),
        ("25%,50%", 8, [2, 2, 4]),  # stops short of 100%: the last wave takes the rest
        ("5,2,100%", 10, [5, 1, 4]),  # a smaller count still adds one node
        ("100%", 7, [7]),
        ("50", 6, [6]),
    ],
)
def test_waves_are_cumulative_and_each_adds_a_node(spec: str, total: int, sizes: list[int]) -> None:
    nodes = NODES[:total] if total <= len(NODES) else [f"n{i}" for i in range(total)]
    waves = plan_waves(nodes, parse_waves(spec))
    assert [len(w) for w in waves] == sizes
    assert [n for w in waves for n in w] == nodes  # every node once, in order


@pytest.mark.parametrize("spec", ["0", "-1", "0%", "150%", "ten", "1,,2", "5%%"])
def test_a_bad_entry_is_named(spec: str) -> None:
    with pytest.raises(PlanError, match="wave"):
        parse_waves(spec)


def test_a_group_is_a_glob_over_node_ids() -> None:
    assert select_group(["pump-2", "fan-1", "pump-1"], "pump-*") == ["pump-1", "pump-2"]
    assert select_group(["pump-2"], "fan-*") == []
