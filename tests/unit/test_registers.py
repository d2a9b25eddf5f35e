"""Modbus register maps without a socket: decoding, word order, scaling, request planning."""

from __future__ import annotations

import math
import struct

import pytest

from edge_node.sources.registers import (
    Register,
    check_map,
    decode,
    encode,
    plan_reads,
    raw_for,
    scaled,
)


@pytest.mark.parametrize(
    ("words", "dtype", "order", "value"),
    [
        ([0xFFFF], "int16", "big", -1.0),
        ([0x8000], "int16", "big", -32768.0),
        ([0xFFFF], "uint16", "big", 65535.0),
        ([0x0001, 0x0000], "uint32", "big", 65536.0),
        ([0x0000, 0x0001], "uint32", "little", 65536.0),
        ([0xFFFF, 0xFFFE], "int32", "big", -2.0),
        ([0xFFFE, 0xFFFF], "int32", "little", -2.0),
        ([0x4049, 0x0FDB], "float32", "big", struct.unpack(">f", bytes.fromhex("40490FDB"))[0]),
        ([0x0FDB, 0x4049], "float32", "little", struct.unpack(">f", bytes.fromhex("40490FDB"))[0]),
    ],
)
def test_decode_reads_registers_big_endian_with_the_word_order_of_32_bit_values(
    words: list[int], dtype: str, order: str, value: float
) -> None:
    assert decode(words, dtype, order) == value  # type: ignore[arg-type]


def test_float32_pi_decodes_as_pi() -> None:
    assert decode([0x4049, 0x0FDB], "float32") == pytest.approx(math.pi, rel=1e-7)


@pytest.mark.parametrize("dtype", ["int16", "uint16", "int32", "uint32", "float32"])
@pytest.mark.parametrize("order", ["big", "little"])
def test_encode_is_the_inverse_of_decode(dtype: str, order: str) -> None:
    for value in (0.0, 1.0, 1234.0, 32767.0):
        assert decode(encode(value, dtype, order), dtype, order) == value  # type: ignore[arg-type]


def test_decode_refuses_the_wrong_number_of_words() -> None:
    with pytest.raises(ValueError, match="float32 needs 2 registers, got 1"):
        decode([1], "float32")


def test_scaled_applies_scale_then_offset_and_raw_for_inverts_it() -> None:
    reg = Register("flow", 0, dtype="uint32", scale=0.001, offset=-10.0)
    words = raw_for(reg, 125.2)
    assert words == encode(135200, "uint32")
    assert scaled(reg, words) == pytest.approx(125.2)


def test_a_nan_float_in_the_device_reads_as_nan() -> None:
    reg = Register("p", 0, dtype="float32", scale=2.0)
    assert math.isnan(scaled(reg, encode(math.nan, "float32")))
    assert math.isnan(scaled(reg, encode(math.inf, "float32")))


def test_plan_reads_joins_contiguous_registers_per_table_and_never_bridges_a_gap() -> None:
    regs = [
        Register("a", 0, "holding", "float32"),  # 0-1
        Register("b", 2, "holding", "uint16"),  # 2
        Register("c", 10, "holding", "int16"),  # gap before it
        Register("d", 0, "input", "int32"),  # same address, other table
        Register("e", 3, "holding", "int16"),  # listed last, contiguous with b
    ]
    spans = [(s.table, s.start, s.count, s.members) for s in plan_reads(regs)]
    assert spans == [
        ("holding", 0, 4, (0, 1, 4)),
        ("holding", 10, 1, (2,)),
        ("input", 0, 2, (3,)),
    ]


def test_plan_reads_splits_runs_longer_than_a_request_allows() -> None:
    regs = [Register(f"c{i}", i * 2, dtype="float32") for i in range(70)]  # 140 registers
    spans = plan_reads(regs)
    assert [(s.start, s.count) for s in spans] == [(0, 124), (124, 16)]
    assert sorted(i for s in spans for i in s.members) == list(range(70))


def test_plan_reads_lets_two_channels_share_a_register() -> None:
    regs = [Register("raw", 5, dtype="uint16"), Register("signed", 5, dtype="int16")]
    assert [(s.start, s.count, s.members) for s in plan_reads(regs)] == [(5, 1, (0, 1))]


def test_check_map_names_index_and_field_of_each_problem() -> None:
    regs = [
        Register("a", 0),
        Register("a", 1),
        Register("b", 65535, dtype="float32"),
        Register("c", 3, scale=0.0),
        Register("d", 4, offset=math.inf),
    ]
    problems = check_map(regs)
    assert [(i, field) for i, field, _ in problems] == [
        (1, "channel"),
        (2, "address"),
        (3, "scale"),
        (4, "offset"),
    ]
    assert "needs registers up to 65536" in problems[1][2]
    assert check_map(regs[:1]) == []
