"""Capture assembly (pure) and the capture store of ``serve`` (on tmp_path)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import msgspec
import numpy as np
import pytest
from numpy.typing import NDArray

from cloud_hub.models.capture_store import RESULT_FILE, CaptureStore, load_capture
from cloud_hub.models.captures import CaptureAssembly, CaptureError
from schemas.messages import Capture
from schemas.packing import pack_f32
from schemas.samples import SAMPLES

CHANNELS = ["pressure", "current", "temp"]
READINGS: NDArray[np.float32] = (np.arange(7 * 3).reshape(7, 3) / 4).astype(np.float32)


def chunks(values: NDArray[np.float32] = READINGS, per: int = 3, **changes: Any) -> list[Capture]:
    """``values`` cut into chunks of ``per`` rows, as the node sends them."""
    total = -(-len(values) // per)
    out = []
    for i in range(total):
        rows = values[i * per : (i + 1) * per]
        fields: dict[str, Any] = {
            "node": "pump-1",
            "command": "c1",
            "chunk": i,
            "chunks": total,
            "channels": CHANNELS,
            "t0": 100.0 + i * per * 0.5,
            "period": 0.5,
            "n": len(rows),
            "data": pack_f32(rows),
            **changes,
        }
        out.append(cast(Capture, msgspec.structs.replace(SAMPLES["capture"], **fields)))
    return out


def test_chunks_out_of_order_assemble_in_order() -> None:
    assembly = CaptureAssembly("c1", "pump-1")
    parts = chunks()
    for chunk in reversed(parts):
        assert not assembly.complete
        assert assembly.add(chunk) is True
    assert assembly.complete and assembly.missing() == []
    data = assembly.assemble()
    assert data.values.dtype == np.float32
    np.testing.assert_array_equal(data.values, READINGS)
    assert (data.channels, data.t0, data.period) == (CHANNELS, 100.0, 0.5)
    assert (data.command, data.node) == ("c1", "pump-1")


def test_a_repeated_chunk_is_ignored() -> None:
    assembly = CaptureAssembly("c1", "pump-1")
    first, *rest = chunks()
    assert assembly.add(first) is True
    assert assembly.add(first) is False
    assert assembly.received == 1
    assert assembly.missing() == [1, 2]
    for chunk in rest:
        assembly.add(chunk)
    assert len(assembly.assemble().values) == len(READINGS)


def test_assemble_before_completion_names_the_missing_chunks() -> None:
    assembly = CaptureAssembly("c1", "pump-1")
    assembly.add(chunks()[1])
    with pytest.raises(CaptureError, match=r"\[0, 2\]"):
        assembly.assemble()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"channels": ["pressure", "current"], "data": pack_f32(np.zeros((3, 2)))}, "channels"),
        ({"chunks": 5}, "chunks"),
        ({"period": 1.0}, "period"),
        ({"node": "pump-2"}, "node"),
        ({"command": "c2"}, "command"),
    ],
)
def test_a_chunk_that_does_not_fit_is_rejected_naming_the_field(
    change: dict[str, Any], field: str
) -> None:
    assembly = CaptureAssembly("c1", "pump-1")
    first, second, _ = chunks()
    assembly.add(first)
    with pytest.raises(CaptureError, match=field):
        assembly.add(msgspec.structs.replace(second, **change))
    assert assembly.received == 1


def test_data_of_the_wrong_size_is_rejected() -> None:
    # Built without validation, as a decoder of an older schema might hand it over.
    chunk = chunks()[0]
    msgspec.structs.force_setattr(chunk, "data", chunk.data[:-4])
    with pytest.raises(CaptureError, match="'data' has"):
        CaptureAssembly("c1", "pump-1").add(chunk)


def test_the_same_index_with_different_data_is_rejected() -> None:
    assembly = CaptureAssembly("c1", "pump-1")
    first = chunks()[0]
    assembly.add(first)
    other = msgspec.structs.replace(first, data=pack_f32(np.ones((3, 3))))
    with pytest.raises(CaptureError, match="twice"):
        assembly.add(other)


def test_store_writes_the_readings_when_complete(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path / "captures")
    parts = chunks()
    for chunk in (parts[2], parts[0]):
        store.on_capture(chunk, 0.0)
    folder = tmp_path / "captures" / "c1"
    assert not (folder / RESULT_FILE).exists()
    assert len(list(folder.glob("chunk-*"))) == 2
    store.on_capture(parts[1], 0.0)
    data = load_capture(folder / RESULT_FILE)
    np.testing.assert_array_equal(data.values, READINGS)
    assert (data.channels, data.t0, data.period, data.node) == (CHANNELS, 100.0, 0.5, "pump-1")
    assert list(folder.glob("chunk-*")) == []
    assert store.completed == 1
    store.on_capture(parts[1], 0.0)  # a redelivery after completion changes nothing
    assert store.completed == 1


def test_store_survives_a_restart_half_way(tmp_path: Path) -> None:
    parts = chunks()
    CaptureStore(tmp_path).on_capture(parts[0], 0.0)
    restarted = CaptureStore(tmp_path)
    restarted.on_capture(parts[1], 0.0)
    restarted.on_capture(parts[2], 0.0)
    assert restarted.completed == 1
    np.testing.assert_array_equal(load_capture(tmp_path / "c1" / RESULT_FILE).values, READINGS)


def test_store_refuses_a_command_id_that_is_not_a_safe_folder_name(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path / "captures")
    store.on_capture(chunks(command="../escape")[0], 0.0)
    assert store.refused["bad_command_id"] == 1
    assert not (tmp_path / "escape").exists()


def test_store_counts_inconsistent_chunks(tmp_path: Path) -> None:
    store = CaptureStore(tmp_path)
    first, second, _ = chunks()
    store.on_capture(first, 0.0)
    store.on_capture(msgspec.structs.replace(second, period=9.0), 0.0)
    assert store.refused["inconsistent"] == 1
    assert len(list((tmp_path / "c1").glob("chunk-*"))) == 1
