"""Nothing lost, nothing counted twice, on real processes: the broker killed before its first
autosave, the hub and a node killed, the broker frozen, while two nodes stream (bench/chaos.py
runs the long version)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.chaos import Fleet, make_model_and_csv

pytestmark = pytest.mark.integration


def test_every_accepted_reading_is_counted_once_through_kills_and_a_partition(
    tmp_path: Path,
) -> None:
    fleet = Fleet(tmp_path, 2, make_model_and_csv(tmp_path, 2400), speed=200, resend_s=1.0)
    try:
        time.sleep(2.0)
        # Within 30 s of its start: the broker has saved nothing, so it comes back without the
        # hub's session and without the messages it had acknowledged to the nodes.
        fleet.kill_broker(down_s=0.5)
        time.sleep(1.5)
        fleet.kill_hub(down_s=0.5)
        time.sleep(1.0)
        fleet.kill_node(0, down_s=0.3)
        time.sleep(1.0)
        fleet.partition(3.0)
    except BaseException:
        fleet.close()
        raise
    tally = fleet.finish("suite", timeout=60)
    assert tally.produced >= 2 * 2400  # the killed node replayed its file under a new boot
    assert (tally.lost, tally.double) == (0, 0)
    assert tally.counted == tally.produced
