"""How long retrain waits for a capture and what its progress line says."""

from __future__ import annotations

import pytest

from cloud_hub.commands.capture_wait import CaptureWait, capture_duration_s, sample_rate
from schemas.messages import Capabilities


def _caps(hz: float) -> Capabilities:
    return Capabilities(
        channels=["a"],
        sample_hz=hz,
        memory_mb=512.0,
        cpu_count=2,
        onnx_opset=17,
        ort_version="1.17",
        platform="linux",
    )


def test_a_long_capture_on_a_slow_node_is_waited_for_beyond_the_timeout() -> None:
    wait = CaptureWait.start(1000.0, 3600, "next", sample_rate(_caps(10.0)), 120.0)
    # 3600 readings at 10 Hz take 360 s; the timeout is slack on top of that.
    assert wait.deadline == pytest.approx(1000.0 + 360.0 + 120.0)
    assert not wait.expired(1000.0 + 300.0)
    assert wait.expired(1000.0 + 480.0)


def test_chunks_arriving_keep_the_wait_alive() -> None:
    wait = CaptureWait.start(0.0, 100, "next", 10.0, 30.0)  # deadline 40
    wait.on_chunk(35.0)
    assert not wait.expired(60.0)
    assert wait.expired(65.0)
    wait.on_chunk(10.0)  # a late-seen early chunk never pulls the deadline in
    assert wait.deadline == pytest.approx(65.0)


def test_last_mode_and_an_unknown_rate_wait_only_the_timeout() -> None:
    assert capture_duration_s(3600, "last", 10.0) == 0.0
    assert capture_duration_s(3600, "next", None) == 0.0
    assert sample_rate(None) is None
    assert sample_rate(_caps(0.0)) is None
    assert CaptureWait.start(5.0, 3600, "next", None, 120.0).deadline == pytest.approx(125.0)


def test_progress_shows_readings_and_time_left() -> None:
    wait = CaptureWait.start(0.0, 3600, "next", 10.0, 120.0)  # deadline 480
    assert wait.progress(1.0, None, 0) == "0/3600 readings captured, 479 s left"
    # Accepted at 2 s: 100 s later about 1000 readings are in the node's collector.
    assert wait.progress(102.0, 2.0, 0) == "~1000/3600 readings captured, 378 s left"
    assert wait.progress(400.0, 2.0, 0).startswith("~3600/3600 readings captured")
    assert wait.progress(470.0, 2.0, 1200) == "1200/3600 readings uploaded, 10 s left"
    assert wait.progress(999.0, 2.0, 1200).endswith(", 0 s left")
