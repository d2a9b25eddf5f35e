"""Chunk ranges and artifact splitting shared by node and hub."""

from __future__ import annotations

import pytest

from schemas.commands import format_ranges, parse_ranges, split_artifact


def test_ranges_round_trip() -> None:
    for indexes in ([], [0], [0, 1, 2, 5, 7, 8], [3, 1, 2], list(range(100))):
        text = format_ranges(indexes)
        assert parse_ranges(text, 100) == sorted(indexes)
    assert format_ranges([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"


@pytest.mark.parametrize("text", ["x", "3-1", "0-10", "-1", "5-"])
def test_bad_ranges_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="range"):
        parse_ranges(text, 10)


def test_split_artifact_keeps_every_byte_in_order() -> None:
    data = bytes(range(256)) * 1000
    chunks = split_artifact(data, 10_000)
    assert b"".join(chunks) == data
    assert len(chunks) == 26 and all(len(c) == 10_000 for c in chunks[:-1])
    assert split_artifact(b"", 10) == [b""]
