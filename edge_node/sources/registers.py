"""Modbus register maps, pure: which registers to read in one request, and words to values.

No Modbus library here (edge_node.sources.modbus is the one adapter): a register map is decoded
and scaled the same way whatever client fetched the words, and tested without a socket.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Table = Literal["holding", "input"]
DataType = Literal["int16", "uint16", "int32", "uint32", "float32"]
WordOrder = Literal["big", "little"]

TABLES: tuple[Table, ...] = ("holding", "input")
WORDS: dict[DataType, int] = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2}
WORD_ORDERS: tuple[WordOrder, ...] = ("big", "little")
# Big-endian struct codes: a register is big-endian on the wire (Modbus application protocol
# 4.2); only the order of the words of a 32-bit value differs between devices.
_FORMATS: dict[DataType, str] = {
    "int16": ">h",
    "uint16": ">H",
    "int32": ">i",
    "uint32": ">I",
    "float32": ">f",
}
MAX_ADDRESS = 65535
# At most 125 registers per read request (Modbus application protocol 6.3 and 6.4).
MAX_READ = 125


@dataclass(frozen=True, slots=True)
class Register:
    """One channel's value: ``raw * scale + offset`` in ``unit``, from ``address`` of ``table``
    (0-based protocol address, as on the wire)."""

    channel: str
    address: int
    table: Table = "holding"
    dtype: DataType = "uint16"
    word_order: WordOrder = "big"
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""

    @property
    def words(self) -> int:
        """Registers the value occupies."""
        return WORDS[self.dtype]


@dataclass(frozen=True, slots=True)
class Span:
    """One read request: ``count`` registers of ``table`` from ``start``, and the map entries
    (by index in the map) whose words lie inside it."""

    table: Table
    start: int
    count: int
    members: tuple[int, ...]


def plan_reads(registers: Sequence[Register], max_count: int = MAX_READ) -> list[Span]:
    """Group the map into as few requests as possible without reading registers nobody mapped.

    Gaps are never bridged: many devices answer a read that touches an unmapped address with
    an exception for the whole request, which would turn every channel in it into a dropout.
    """
    spans: list[Span] = []
    for table in TABLES:
        order = sorted(
            (i for i, r in enumerate(registers) if r.table == table),
            key=lambda i: registers[i].address,
        )
        start, end, members = -1, -1, list[int]()
        for i in order:
            reg = registers[i]
            reg_end = reg.address + reg.words
            if members and reg.address <= end and max(end, reg_end) - start <= max_count:
                end = max(end, reg_end)
                members.append(i)
                continue
            if members:
                spans.append(Span(table, start, end - start, tuple(members)))
            start, end, members = reg.address, reg_end, [i]
        if members:
            spans.append(Span(table, start, end - start, tuple(members)))
    return spans


def decode(words: Sequence[int], dtype: DataType, word_order: WordOrder = "big") -> float:
    """The raw value of ``dtype`` held in ``words`` (16-bit register values, address order)."""
    if len(words) != WORDS[dtype]:
        raise ValueError(f"{dtype} needs {WORDS[dtype]} registers, got {len(words)}")
    ordered = list(words) if word_order == "big" else list(reversed(words))
    data = b"".join(int(w).to_bytes(2, "big") for w in ordered)
    return float(struct.unpack(_FORMATS[dtype], data)[0])


def encode(value: float, dtype: DataType, word_order: WordOrder = "big") -> list[int]:
    """The registers that hold ``value`` as ``dtype`` (the inverse of :func:`decode`, for
    simulated devices); integers are rounded and must fit the type."""
    code = _FORMATS[dtype]
    data = struct.pack(code, value if dtype == "float32" else round(value))
    words = [int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)]
    return words if word_order == "big" else list(reversed(words))


def scaled(register: Register, words: Sequence[int]) -> float:
    """The channel value of ``register`` from its words; NaN when the device holds a
    non-finite float (some devices write NaN for a failed sensor)."""
    raw = decode(words, register.dtype, register.word_order)
    return raw * register.scale + register.offset if math.isfinite(raw) else math.nan


def raw_for(register: Register, value: float) -> list[int]:
    """The words a device holds for channel ``value`` of ``register`` (inverse of
    :func:`scaled`, for simulated devices)."""
    return encode((value - register.offset) / register.scale, register.dtype, register.word_order)


def check_map(registers: Sequence[Register]) -> list[tuple[int, str, str]]:
    """Problems of a register map as ``(index, field, message)``; empty when it is usable."""
    problems: list[tuple[int, str, str]] = []
    seen: dict[str, int] = {}
    for i, reg in enumerate(registers):
        if reg.channel in seen:
            problems.append(
                (i, "channel", f"{reg.channel!r} is already mapped by [{seen[reg.channel]}]")
            )
        seen.setdefault(reg.channel, i)
        last = reg.address + reg.words - 1
        if reg.address < 0 or last > MAX_ADDRESS:
            problems.append(
                (
                    i,
                    "address",
                    f"{reg.dtype} at {reg.address} needs registers up to {last}, "
                    f"but addresses are 0..{MAX_ADDRESS}",
                )
            )
        if not (math.isfinite(reg.scale) and reg.scale != 0):
            problems.append((i, "scale", f"must be a finite non-zero number, got {reg.scale!r}"))
        if not math.isfinite(reg.offset):
            problems.append((i, "offset", f"must be a finite number, got {reg.offset!r}"))
    return problems
