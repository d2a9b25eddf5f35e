"""Telling a session takeover (two clients with one id) from an ordinary dropped connection."""

from __future__ import annotations

from schemas.connection import SESSION_TAKEN_OVER, Flapping, taken_over

UNSPECIFIED = 0x80


def _cycle(flap: Flapping, start: float, lasted: float, reason: int = UNSPECIFIED) -> bool:
    flap.connected(start)
    return flap.dropped(start + lasted, reason)


def test_connections_evicted_within_seconds_are_reported_at_the_third() -> None:
    flap = Flapping(short_s=10.0, runs=3)
    said = [_cycle(flap, 2.0 * i, 1.0) for i in range(14)]
    # The third in a row, then every tenth after it, so two hubs do not flood the log.
    assert [i for i, s in enumerate(said) if s] == [2, 12]


def test_a_long_connection_in_between_resets_the_run() -> None:
    flap = Flapping(short_s=10.0, runs=3)
    assert not _cycle(flap, 0.0, 1.0)
    assert not _cycle(flap, 2.0, 1.0)
    assert not _cycle(flap, 4.0, 600.0)  # a network drop after ten minutes: not a takeover
    assert not _cycle(flap, 700.0, 1.0)
    assert flap.run == 1


def test_a_broker_that_says_taken_over_is_believed_at_once() -> None:
    assert _cycle(Flapping(), 0.0, 3600.0, SESSION_TAKEN_OVER)


def test_a_drop_before_any_connection_is_not_short() -> None:
    flap = Flapping(runs=1)
    assert not flap.dropped(5.0, UNSPECIFIED)


def test_the_line_names_url_and_client_id() -> None:
    line = taken_over("mqtts://broker:8883", "cloud-hub", 3)
    assert "mqtts://broker:8883" in line and "'cloud-hub'" in line and "3 times" in line
