"""Polled sources without a device: connection state and backoff, dropouts, the row buffer."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_node.sources.base import SourceError
from edge_node.sources.polling import Backoff, Poller, ReadError, Reading, RowBuffer, behind


class FakeReader:
    """A device whose answers the test scripts: a connect outcome and a queue of readings."""

    def __init__(self, channels: list[str]) -> None:
        self._channels = channels
        self.refuse = False
        self.answers: list[Reading | ReadError] = []
        self.connects = 0
        self.closes = 0

    @property
    def channels(self) -> list[str]:
        return self._channels

    @property
    def name(self) -> str:
        return "fake device"

    def connect(self) -> None:
        self.connects += 1
        if self.refuse:
            raise ReadError("connection refused")

    def read(self) -> Reading:
        answer = self.answers.pop(0)
        if isinstance(answer, ReadError):
            raise answer
        return answer

    def close(self) -> None:
        self.closes += 1


def _good(*values: float) -> Reading:
    return Reading(np.array(values), [""] * len(values), [""] * len(values))


def test_backoff_doubles_from_first_up_to_most() -> None:
    backoff = Backoff(0.5, 4.0)
    assert [backoff.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert backoff.delay(10_000) == 4.0
    with pytest.raises(SourceError, match="0 < first <= most"):
        Backoff(5.0, 1.0)


def test_an_unreachable_device_gives_nan_rows_and_is_retried_only_after_the_backoff() -> None:
    reader = FakeReader(["a", "b"])
    reader.refuse = True
    poller = Poller(reader, Backoff(1.0, 8.0))
    rows = [poller.row(t) for t in (0.0, 0.5, 1.0, 1.5, 2.0, 3.0)]
    # Attempts at 0 (fails, wait 1), 1.0 (fails, wait 2), 3.0: never between.
    assert reader.connects == 3
    assert all(
        np.isnan(values).all() and reasons == ["disconnected"] * 2 for values, reasons in rows
    )
    assert not poller.connected


def test_after_a_lost_connection_the_poller_reconnects_at_once_and_counts_it() -> None:
    reader = FakeReader(["a", "b"])
    reader.answers = [_good(1.0, 2.0), ReadError("connection reset"), _good(3.0, 4.0)]
    poller = Poller(reader, Backoff(5.0, 60.0))
    values, reasons = poller.row(0.0)
    assert values.tolist() == [1.0, 2.0] and reasons == ["", ""]
    values, reasons = poller.row(1.0)
    assert np.isnan(values).all() and reasons == ["disconnected", "disconnected"]
    assert reader.closes == 1 and not poller.connected
    values, _ = poller.row(2.0)  # no backoff wait after a loss: one immediate attempt
    assert values.tolist() == [3.0, 4.0]
    assert (reader.connects, poller.reconnects, poller.connected) == (2, 1, True)


def test_bad_values_of_single_channels_pass_through_as_nan_with_their_reason() -> None:
    reader = FakeReader(["a", "b"])
    reader.answers = [Reading(np.array([math.nan, 7.0]), ["exception", ""], ["code 2", ""])]
    poller = Poller(reader, Backoff(1.0, 1.0))
    values, reasons = poller.row(0.0)
    assert math.isnan(values[0]) and values[1] == 7.0
    assert reasons == ["exception", ""]
    assert poller.connected


def test_row_buffer_hands_out_consecutive_runs_and_counts_dropouts_by_reason() -> None:
    buffer = RowBuffer(width=2, capacity=100)
    buffer.push(0, np.array([[1.0, 2.0], [3.0, 4.0]]), [])
    buffer.push(2, np.full((3, 2), np.nan), ["disconnected"] * 6)
    buffer.push(7, np.array([[5.0, math.nan]]), ["", "exception"])  # 5 and 6 never came
    first, values = buffer.take(4) or (-1, None)
    assert first == 0 and values is not None and values.shape == (4, 2)
    assert values.dtype == np.float32 and values[:2].tolist() == [[1.0, 2.0], [3.0, 4.0]]
    first, values = buffer.take(4) or (-1, None)
    assert first == 4 and values is not None and values.shape == (1, 2)
    first, values = buffer.take(4) or (-1, None)
    assert first == 7 and values is not None and values[0, 0] == 5.0
    assert buffer.take(4) is None
    assert buffer.counts() == (6, {"disconnected": 6, "exception": 1})


def test_a_full_row_buffer_drops_the_oldest_and_counts_them() -> None:
    buffer = RowBuffer(width=3, capacity=4)
    buffer.push(0, np.arange(18.0).reshape(6, 3), [])
    first, values = buffer.take(10) or (-1, None)
    assert first == 2 and values is not None and values[0].tolist() == [6.0, 7.0, 8.0]
    assert buffer.counts() == (6, {"overflow": 6})


@pytest.mark.parametrize(("now", "late"), [(10.0, 0), (10.09, 0), (10.1, 1), (10.35, 3), (9.0, 0)])
def test_behind_counts_whole_periods_past_the_due_time(now: float, late: int) -> None:
    # Reading 100 at 0.1 s per reading from origin 0 is due at 10.0.
    assert behind(0.0, 0.1, 100, now + 1e-9) == late
