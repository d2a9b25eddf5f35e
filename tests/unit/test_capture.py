"""Readings kept for retraining: the ring of the last ones, the next ones, and upload chunks."""

from __future__ import annotations

import numpy as np
import pytest

from edge_node.lifecycle.capture import (
    MAX_CHUNK_BYTES,
    CaptureRing,
    NextCapture,
    Segment,
    upload_chunks,
)
from schemas.codec import decode, encode
from schemas.messages import Capture
from schemas.packing import pack_f32, unpack_f32


def rows(start: int, n: int, channels: int = 3) -> np.ndarray:
    """Readings whose values say which reading and channel they are."""
    index = np.arange(start, start + n, dtype=np.float32)[:, None]
    return index * 10 + np.arange(channels, dtype=np.float32)


def stitched(segments: list[Segment]) -> np.ndarray:
    return np.concatenate([s.values for s in segments])


def test_the_ring_keeps_the_last_readings_across_blocks() -> None:
    ring = CaptureRing(capacity=10, channels=3)
    t = 100.0
    for start, n in ((0, 4), (4, 5), (9, 6)):  # 15 readings in three blocks
        ring.add(t + start, 1.0, rows(start, n))
    assert len(ring) == 10
    last = ring.last(7)
    np.testing.assert_array_equal(stitched(last), rows(8, 7))
    assert last[0].t0 == 108.0
    np.testing.assert_array_equal(stitched(ring.last(50)), rows(5, 10))


def test_a_block_larger_than_the_ring_keeps_its_tail() -> None:
    ring = CaptureRing(capacity=5, channels=3)
    ring.add(0.0, 0.5, rows(0, 12))
    (only,) = ring.last(5)
    assert only.t0 == 3.5
    np.testing.assert_array_equal(only.values, rows(7, 5))


def test_the_ring_copies_what_it_keeps() -> None:
    ring = CaptureRing(capacity=5, channels=3)
    block = rows(0, 2)
    ring.add(0.0, 1.0, block)
    block[:] = -1
    np.testing.assert_array_equal(stitched(ring.last(2)), rows(0, 2))


def test_next_capture_takes_exactly_what_it_wants() -> None:
    capture = NextCapture("t-1", wanted=7, channels=3)
    assert not capture.add(0.0, 1.0, rows(0, 4))
    assert capture.add(4.0, 1.0, rows(4, 5))
    assert capture.got == 7
    np.testing.assert_array_equal(stitched(capture.segments), rows(0, 7))


def test_upload_chunks_stay_under_the_size_limit_and_keep_time() -> None:
    channels = 8
    segments = [Segment(1000.0 + i * 50, 1.0, rows(i * 50, 50, channels)) for i in range(200)]
    chunks = upload_chunks(segments, channels)
    per_chunk = MAX_CHUNK_BYTES // (4 * channels)
    assert [c.n for c in chunks] == [per_chunk, per_chunk, 10_000 - 2 * per_chunk]
    assert all(c.values.nbytes <= MAX_CHUNK_BYTES for c in chunks)
    assert [c.t0 for c in chunks] == [1000.0, 1000.0 + per_chunk, 1000.0 + 2 * per_chunk]
    np.testing.assert_array_equal(stitched(chunks), rows(0, 10_000, channels))


def test_upload_chunks_are_cut_where_time_jumps() -> None:
    segments = [
        Segment(0.0, 1.0, rows(0, 3)),
        Segment(3.0, 1.0, rows(3, 2)),  # continues
        Segment(60.0, 1.0, rows(5, 2)),  # a gap in the source
        Segment(62.0, 0.5, rows(7, 2)),  # the period changed
    ]
    chunks = upload_chunks(segments, 3)
    assert [(c.t0, c.period, c.n) for c in chunks] == [
        (0.0, 1.0, 5),
        (60.0, 1.0, 2),
        (62.0, 0.5, 2),
    ]


def test_captured_data_round_trips_through_a_capture_message() -> None:
    values = rows(0, 6, channels=4)
    values[2, 1] = np.nan  # a dropout travels as it was read
    (part,) = upload_chunks([Segment(5.0, 0.1, values)], 4)
    message = Capture(
        node="pump-01",
        boot="b",
        seq=0,
        ts=0.0,
        command="t-1",
        chunk=0,
        chunks=1,
        channels=["a", "b", "c", "d"],
        t0=part.t0,
        period=part.period,
        n=part.n,
        data=pack_f32(part.values),
    )
    received = decode("capture", encode(message))
    np.testing.assert_array_equal(unpack_f32(received.data, 4), values)


def test_bad_shapes_are_refused() -> None:
    with pytest.raises(ValueError, match=r"expected \[n, 3\]"):
        CaptureRing(10, 3).add(0.0, 1.0, np.zeros((2, 4), np.float32))


def test_the_ring_cuts_its_runs_where_time_jumps_or_the_period_changes() -> None:
    ring = CaptureRing(capacity=20, channels=3)
    ring.add(0.0, 1.0, rows(0, 3))
    ring.add(3.0, 1.0, rows(3, 1))  # continues
    ring.add(10.0, 1.0, rows(4, 2))  # a gap
    ring.add(12.0, 0.5, rows(6, 2))  # another period
    runs = ring.last(20)
    assert [(r.t0, r.period, r.n) for r in runs] == [(0.0, 1.0, 4), (10.0, 1.0, 2), (12.0, 0.5, 2)]
    np.testing.assert_array_equal(stitched(runs), rows(0, 8))


def test_a_full_ring_takes_no_more_memory_per_poll() -> None:
    import tracemalloc

    ring = CaptureRing(capacity=1_000, channels=8)
    row = np.zeros((1, 8), np.float32)
    for i in range(1_000):
        ring.add(i * 0.02, 0.02, row)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(1_000, 6_000):
            ring.add(i * 0.02, 0.02, row + i)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 4_096  # 5,000 polls; a kept array per poll would be ~500 kB
    np.testing.assert_array_equal(stitched(ring.last(2))[:, 0], [5_998.0, 5_999.0])
