"""Every input bounded: implausible seqs, reading indexes and clocks are refused with a reason,
counted, and never change state; the dedupe state never counts a replay twice."""

from __future__ import annotations

import numpy as np
import pytest

from cloud_hub.ingest.coverage import Coverage
from cloud_hub.ingest.dedupe import Deduper
from cloud_hub.ingest.fleet import FleetState
from cloud_hub.ingest.inbound import Bounds, Ingest
from tests.unit.test_ingest import NOW, msg, result, send

FLAGS = np.zeros(4, dtype=bool)
SAMPLES_BOOT = msg("telemetry").boot


@pytest.fixture
def ingest() -> Ingest:
    return Ingest(FleetState(offline_after_s=60.0), Deduper(), bounds=Bounds())


def test_a_seq_far_beyond_the_stream_is_refused_and_changes_no_gauge(ingest: Ingest) -> None:
    for seq in range(3):
        send(ingest, result("n1", seq, FLAGS, first=4 * seq))
    out = send(ingest, result("n1", 2**40, FLAGS, first=12))
    assert (out.status, out.reason) == ("rejected", "implausible_seq")
    assert ingest.rejects["implausible_seq", "result"] == 1
    assert ingest.deduper.gaps("n1") == 0
    state = ingest.fleet.node("n1")
    assert state is not None and state.readings == 12
    # Within the bound it is a gap like any other.
    assert send(ingest, result("n1", 1000, FLAGS, first=12)).status == "applied"
    assert ingest.deduper.gaps("n1") == 997


def test_a_reading_index_far_beyond_the_boot_is_refused(ingest: Ingest) -> None:
    send(ingest, result("n1", 0, FLAGS, first=0))
    out = send(ingest, result("n1", 1, FLAGS, first=2**52))
    assert (out.status, out.reason) == ("rejected", "implausible_index")
    assert ingest.fleet.missing_readings("n1") == 0


def test_a_status_from_the_far_future_is_refused_and_the_node_can_still_come_online(
    ingest: Ingest,
) -> None:
    out = send(ingest, msg("status", "n1", state="offline", ts=1e18), now=NOW)
    assert (out.status, out.reason) == ("rejected", "bad_clock")
    assert send(ingest, msg("status", "n1", state="online", ts=NOW), now=NOW).status == "applied"
    state = ingest.fleet.node("n1")
    assert state is not None and ingest.fleet.is_online(state, NOW)


@pytest.mark.parametrize("ts", [float("nan"), float("inf"), NOW + 601])
def test_state_messages_with_a_clock_past_the_tolerance_are_refused(
    ingest: Ingest, ts: float
) -> None:
    out = send(ingest, msg("telemetry", "n1", ts=ts), now=NOW)
    assert out.reason == "bad_clock"


def test_an_old_clock_is_accepted_because_boards_without_rtc_start_in_1970(
    ingest: Ingest,
) -> None:
    assert send(ingest, msg("status", "n1", state="online", ts=12.0), now=NOW).status == "applied"


def test_replays_never_count_again_however_many_boots_a_node_shows() -> None:
    store: dict[tuple[str, str], Coverage] = {}
    deduper = Deduper(max_boots=2, load=lambda n, b: store.get((n, b)))
    ingest = Ingest(FleetState(60.0), deduper)
    boots = [f"boot-{i}" for i in range(20)]
    for boot in boots:
        for seq in range(3):
            send(ingest, result("n1", seq, FLAGS, first=4 * seq, boot=boot))
        store.update(deduper.take_dirty())  # what the hub's commit writes
    state = ingest.fleet.node("n1")
    assert state is not None and state.readings == 20 * 12
    for boot in boots:  # the whole history again
        for seq in range(3):
            assert send(ingest, result("n1", seq, FLAGS, first=4 * seq, boot=boot)).status == (
                "duplicate"
            )
    assert state.readings == 20 * 12
    assert sum(len(s) for s in deduper._nodes.values()) <= 2  # memory stays bounded


def test_a_stream_message_refused_for_its_clock_is_confirmed_so_it_is_not_sent_forever(
    ingest: Ingest,
) -> None:
    assert send(ingest, msg("telemetry", "n1", seq=4, ts=1e18)).reason == "bad_clock"
    assert ingest.deduper.take_due() == {("n1", SAMPLES_BOOT): [(4, 5)]}
    state = ingest.fleet.node("n1")
    assert state is None or state.telemetry is None
