"""Binary packing of per-reading arrays inside messages (numpy in, bytes out)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

F32 = np.dtype("<f4")


def pack_f32(values: npt.ArrayLike) -> bytes:
    """Little-endian float32 bytes, row-major."""
    return np.ascontiguousarray(values, dtype=F32).tobytes()


def unpack_f32(data: bytes, columns: int = 1) -> npt.NDArray[np.float32]:
    """Inverse of :func:`pack_f32`; 2-D when ``columns`` > 1."""
    flat = np.frombuffer(data, dtype=F32).astype(np.float32)
    return flat.reshape(-1, columns) if columns > 1 else flat


def pack_flags(flags: npt.ArrayLike) -> bytes:
    """One bit per reading, least significant bit first."""
    return np.packbits(np.asarray(flags, dtype=bool), bitorder="little").tobytes()


def unpack_flags(data: bytes, n: int) -> npt.NDArray[np.bool_]:
    """Inverse of :func:`pack_flags` for ``n`` readings."""
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), count=n, bitorder="little")
    return bits.astype(bool)


def count_flags(data: bytes, n: int) -> int:
    """How many of the ``n`` readings :func:`pack_flags` marked, without unpacking them."""
    bits = int.from_bytes(data, "little")
    if n < 8 * len(data):
        bits &= (1 << n) - 1
    return bits.bit_count()
