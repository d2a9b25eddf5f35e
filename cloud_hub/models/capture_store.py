"""Captured readings on disk: ``<captures_dir>/<command id>/``; the only writer of that folder.

``serve`` keeps every capture chunk as it arrives (``chunk-00003.msgpack``) and, once all are
in, writes the readings as ``capture.npz`` (``values`` float32 ``[n, C]``, ``channels``, ``t0``,
``period``, ``node``, ``command``). The chunks are on disk before the hub acks them, so a
capture survives a restart of the hub half-way through its upload.
"""

from __future__ import annotations

import io
import logging
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Final

import numpy as np

from cloud_hub.models.captures import CaptureAssembly, CaptureData, CaptureError
from schemas.codec import DecodeError, decode, encode
from schemas.files import atomic_write
from schemas.messages import Capture
from schemas.topics import TopicError, check_id

log = logging.getLogger(__name__)

RESULT_FILE: Final = "capture.npz"
REFUSAL_REASONS: Final = ("bad_command_id", "inconsistent", "io_error")
MAX_OPEN: Final = 16


class CaptureStore:
    """Receives capture chunks (the ingest's CaptureSink) and keeps them per command."""

    def __init__(self, root: Path | str, max_open: int = MAX_OPEN) -> None:
        self.root = Path(root)
        self._open: OrderedDict[str, CaptureAssembly] = OrderedDict()
        self._max_open = max_open
        self.completed = 0
        self.refused: Counter[str] = Counter()

    def on_capture(self, capture: Capture, now: float) -> None:
        """Store one chunk; write the readings once the capture is complete."""
        try:
            folder = self.root / check_id(capture.command, "command id")
        except TopicError as exc:
            self._refuse("bad_command_id", capture, str(exc))
            return
        try:
            if (folder / RESULT_FILE).exists():
                return  # a redelivery after completion
            self._add(folder, capture)
        except CaptureError as exc:
            self._refuse("inconsistent", capture, str(exc))
        except (OSError, DecodeError) as exc:
            self._refuse("io_error", capture, str(exc))

    def _add(self, folder: Path, capture: Capture) -> None:
        assembly = self._assembly(folder, capture)
        assembly.add(capture)
        chunk_file = folder / f"chunk-{capture.chunk:05d}.msgpack"
        if not chunk_file.exists():
            atomic_write(chunk_file, encode(capture))
        if not assembly.complete:
            return
        data = assembly.assemble()
        save_capture(folder / RESULT_FILE, data)
        self._open.pop(capture.command, None)
        for part in folder.glob("chunk-*.msgpack"):
            part.unlink()
        self.completed += 1
        log.info(
            "capture %s from %s complete: %d readings of %d channels in %s",
            data.command,
            data.node,
            len(data.values),
            len(data.channels),
            folder / RESULT_FILE,
        )

    def _assembly(self, folder: Path, capture: Capture) -> CaptureAssembly:
        """The open assembly of this command, reloaded from its chunk files if evicted."""
        assembly = self._open.get(capture.command)
        if assembly is None:
            folder.mkdir(parents=True, exist_ok=True)
            assembly = CaptureAssembly(capture.command, capture.node)
            for path in sorted(folder.glob("chunk-*.msgpack")):
                assembly.add(decode("capture", path.read_bytes(), str(path)))
            self._open[capture.command] = assembly
            if len(self._open) > self._max_open:
                self._open.popitem(last=False)  # its chunks stay on disk
        else:
            self._open.move_to_end(capture.command)
        return assembly

    def _refuse(self, reason: str, capture: Capture, detail: str) -> None:
        self.refused[reason] += 1
        log.warning(
            "capture chunk %d from %s refused: %s: %s", capture.chunk, capture.node, reason, detail
        )


def save_capture(path: Path, data: CaptureData) -> None:
    """Write ``data`` as an .npz file, atomically."""
    buffer = io.BytesIO()
    np.savez(
        buffer,
        values=data.values,
        channels=np.array(data.channels),
        t0=np.float64(data.t0),
        period=np.float64(data.period),
        node=np.array(data.node),
        command=np.array(data.command),
    )
    atomic_write(path, buffer.getvalue())


def load_capture(path: Path) -> CaptureData:
    """Read a capture written by :func:`save_capture`."""
    with np.load(path, allow_pickle=False) as npz:
        return CaptureData(
            command=str(npz["command"]),
            node=str(npz["node"]),
            channels=[str(c) for c in npz["channels"]],
            t0=float(npz["t0"]),
            period=float(npz["period"]),
            values=np.asarray(npz["values"], dtype=np.float32),
        )
