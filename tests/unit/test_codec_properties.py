"""Property-based tests of the codec: valid messages survive a round trip, and any bytes or
any MessagePack value either decode to a valid message or raise DecodeError, nothing else."""

from __future__ import annotations

from typing import Any

import msgpack
import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.codec import MESSAGE_TYPES, DecodeError, decode, encode
from schemas.messages import MAX_INT, ModelRef, Receipt, ResultBatch
from schemas.packing import pack_f32, pack_flags

KINDS = sorted(MESSAGE_TYPES)
ids = st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True).filter(lambda s: s not in "..")
seqs = st.integers(0, MAX_INT)
floats = st.floats(allow_nan=False)


@st.composite
def result_batches(draw: st.DrawFn) -> ResultBatch:
    n = draw(st.integers(1, 40))
    scores = draw(st.lists(st.floats(width=32, allow_nan=False), min_size=n, max_size=n))
    flags = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    return ResultBatch(
        node=draw(ids), boot=draw(st.text(max_size=64)), seq=draw(seqs), ts=draw(floats),
        model=ModelRef(draw(st.text()), draw(st.text())), first=draw(seqs), t0=draw(floats),
        period=draw(st.floats(min_value=0, allow_infinity=False)), n=n, threshold=draw(floats),
        scores=pack_f32(scores), flags=pack_flags(flags),
    )  # fmt: skip


receipts = st.builds(
    Receipt,
    node=ids,
    boot=st.text(max_size=64),
    seq=seqs,
    ts=floats,
    of_boot=st.text(max_size=64),
    ranges=st.lists(st.tuples(seqs, seqs), max_size=32),
)

msgpack_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats() | st.text()
    | st.binary(),
    lambda inner: st.lists(inner, max_size=5)
    | st.dictionaries(st.text(max_size=8), inner, max_size=5),
    max_leaves=30,
)  # fmt: skip


@given(result_batches())
def test_a_result_batch_survives_a_round_trip(batch: ResultBatch) -> None:
    assert decode("result", encode(batch)) == batch


@given(receipts)
def test_a_receipt_survives_a_round_trip(receipt: Receipt) -> None:
    assert decode("receipt", encode(receipt)) == receipt


@settings(max_examples=200)
@given(st.sampled_from(KINDS), st.binary(max_size=512))
def test_any_bytes_decode_or_raise_decode_error(kind: str, data: bytes) -> None:
    _decode_or_refuse(kind, data)


@settings(max_examples=200)
@given(st.sampled_from(KINDS), msgpack_values)
def test_any_messagepack_value_decodes_or_raises_decode_error(kind: str, value: Any) -> None:
    _decode_or_refuse(kind, msgpack.packb(value))


@given(result_batches(), st.sampled_from(["seq", "first"]), st.integers(MAX_INT + 1, 2**64 - 1))
def test_integers_past_53_bits_are_refused_as_out_of_range(
    batch: ResultBatch, field: str, big: int
) -> None:
    plain = msgspec.to_builtins(batch)
    plain[field] = big
    try:
        decode("result", msgpack.packb(plain))
    except DecodeError as exc:
        assert (exc.reason, exc.field) == ("out_of_range", field)
    else:
        raise AssertionError(f"{field}={big} was accepted")


def _decode_or_refuse(kind: str, data: bytes) -> None:
    try:
        message = decode(kind, data)
    except DecodeError as exc:
        assert exc.reason in ("malformed", "invalid", "too_deep", "out_of_range")
        return
    assert isinstance(message, msgspec.Struct)
    assert encode(message)  # what was accepted can be written again
