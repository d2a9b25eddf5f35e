"""The wire contract: round trips, golden payloads, JSON Schema freshness, rejections."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import msgspec
import numpy as np
import pytest

from schemas import codec, generate
from schemas.messages import Deploy, ModelRef, Ping, ResultBatch
from schemas.packing import count_flags, pack_f32, pack_flags, unpack_f32, unpack_flags
from schemas.samples import SAMPLES, message_type_of
from schemas.topics import Kind, TopicError, model_chunk_topic, node_topic, parse_node_topic

GOLDEN = Path(generate.__file__).parent / "golden"


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_golden_payload_decodes_to_the_sample(name: str) -> None:
    data = (GOLDEN / f"{name}.msgpack").read_bytes()
    assert codec.decode(message_type_of(name), data) == SAMPLES[name]


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_golden_payload_is_plain_messagepack(name: str) -> None:
    """Any MessagePack client can read us: the plain msgpack package sees the same fields."""
    plain = msgpack.unpackb((GOLDEN / f"{name}.msgpack").read_bytes(), raw=False)
    # Through JSON: bytes become base64 text and tuples (receipt ranges) become lists.
    expected = msgspec.json.decode(msgspec.json.encode(SAMPLES[name]))
    assert _bytes_to_b64(plain) == expected
    assert {"v", "node", "boot", "seq", "ts"} <= plain.keys()


def _bytes_to_b64(value: object) -> object:
    """to_builtins renders bytes as base64 text; do the same to msgpack's bytes."""
    if isinstance(value, bytes):
        return msgspec.to_builtins(value)
    if isinstance(value, dict):
        return {k: _bytes_to_b64(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_bytes_to_b64(v) for v in value]
    return value


def test_generated_files_match_the_code() -> None:
    """JSON Schema files and goldens are regenerated from code; fail when they drift apart."""
    assert generate.main(["--check"]) == 0, "run: python -m schemas.generate"


def test_schema_check_ignores_how_docstrings_are_indented(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another msgspec or Python may strip docstring indentation differently: no drift."""
    real = msgspec.json.schema

    def reindented(typ: Any) -> Any:
        schema = real(typ)
        for body in schema.get("$defs", {}).values():
            if "description" in body:
                body["description"] = body["description"].replace("\n", "\n        ") + "  "
        return schema

    monkeypatch.setattr(msgspec.json, "schema", reindented)
    assert generate.main(["--check"]) == 0


def test_schema_check_fails_when_a_field_changes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    class ResultBatch(msgspec.Struct, kw_only=True):  # same name, one field more
        node: str
        added_field: int

    monkeypatch.setitem(codec.MESSAGE_TYPES, "result", ResultBatch)
    assert generate.main(["--check"]) == 1
    assert "out of date: schemas/json/result.schema.json" in capsys.readouterr().err


def test_json_schema_lists_every_required_envelope_field() -> None:
    schema = generate.json_schema("result")
    body = schema["$defs"]["ResultBatch"]
    assert {"node", "boot", "seq", "ts", "scores", "flags", "n"} <= set(body["required"])


def test_commands_are_one_tagged_union() -> None:
    for name in ("cmd_deploy", "cmd_rollback", "cmd_retrain", "cmd_ping"):
        decoded = codec.decode("cmd", codec.encode(SAMPLES[name]))
        assert type(decoded) is type(SAMPLES[name])
    assert isinstance(codec.decode("cmd", codec.encode(SAMPLES["cmd_deploy"])), Deploy)
    assert isinstance(codec.decode("cmd", codec.encode(SAMPLES["cmd_ping"])), Ping)


def test_a_deeply_nested_payload_is_refused_as_too_deep() -> None:
    plain = msgpack.unpackb(codec.encode(SAMPLES["telemetry"]))
    plain["added_later"] = "HOLE"
    nested = b"\x91" * 100_000 + b"\x01"  # [[[...[1]...]]], 100,000 levels
    data = msgpack.packb(plain).replace(msgpack.packb("HOLE"), nested)
    with pytest.raises(codec.DecodeError) as info:
        codec.decode("telemetry", data)
    assert info.value.reason == "too_deep"


def test_unknown_fields_are_ignored_for_forward_compatibility() -> None:
    plain = msgpack.unpackb(codec.encode(SAMPLES["result"]))
    plain["added_in_a_later_release"] = [1, 2, 3]
    assert codec.decode("result", msgpack.packb(plain)) == SAMPLES["result"]


@pytest.mark.parametrize(
    ("mutate", "field", "reason"),
    [
        (lambda m: m.update(seq="seven"), "seq", "invalid"),
        (lambda m: m.update(seq=-1), "seq", "out_of_range"),
        (lambda m: m.update(seq=2**62), "seq", "out_of_range"),
        (lambda m: m.update(first=2**64 - 1), "first", "out_of_range"),
        (lambda m: m.pop("boot"), "boot", "invalid"),
        (lambda m: m.update(boot="b" * 65), "boot", "invalid"),
        (lambda m: m.update(node="a/b"), "node", "invalid"),
        (lambda m: m.update(n=4), "$", "invalid"),
        (lambda m: m.update(model={"name": "x"}), "model", "invalid"),
    ],
)
def test_invalid_fields_name_the_type_and_field(mutate: object, field: str, reason: str) -> None:
    plain = msgpack.unpackb(codec.encode(SAMPLES["result"]))
    mutate(plain)  # type: ignore[operator]
    with pytest.raises(codec.DecodeError) as info:
        codec.decode("result", msgpack.packb(plain), topic="edgeml/v1/pump-01/result")
    err = info.value
    assert err.message_type == "result"
    assert err.reason == reason
    assert err.field.startswith(field) or field == "$"
    assert "result" in str(err) and "edgeml/v1/pump-01/result" in str(err)


def test_result_batch_length_mismatch_names_the_field() -> None:
    plain = msgpack.unpackb(codec.encode(SAMPLES["result"]))
    plain["n"] = 4
    with pytest.raises(codec.DecodeError, match="scores has 12 bytes"):
        codec.decode("result", msgpack.packb(plain))


@pytest.mark.parametrize("garbage", [b"", b"\xc1", b"\x93\x01\x02", b"not msgpack at all"])
def test_garbage_is_one_error_type(garbage: bytes) -> None:
    with pytest.raises(codec.DecodeError) as info:
        codec.decode("telemetry", garbage)
    assert info.value.reason in {"malformed", "invalid"}
    assert info.value.message_type == "telemetry"


def test_unknown_command_type_is_rejected() -> None:
    with pytest.raises(codec.DecodeError) as info:
        codec.decode("cmd", msgpack.packb({"type": "format_disk", "id": "x"}))
    assert info.value.field == "type"


def test_packing_round_trips() -> None:
    scores = np.array([0.0, 1.5, np.nan, 3e38], np.float32)
    assert np.array_equal(unpack_f32(pack_f32(scores)), scores, equal_nan=True)
    flags = np.array([True, False, True, True, False, False, False, False, True])
    assert len(pack_flags(flags)) == 2
    assert np.array_equal(unpack_flags(pack_flags(flags), len(flags)), flags)
    grid = np.arange(12, dtype=np.float32).reshape(4, 3)
    assert np.array_equal(unpack_f32(pack_f32(grid), 3), grid)


def test_result_batch_is_compact() -> None:
    """Per reading: a float32 score and one flag bit; per batch: under 200 bytes of fields."""
    n = 256
    batch = ResultBatch(
        node="pump-01",
        boot="5f0c2a9e",
        seq=1,
        ts=1.0,
        model=ModelRef("m", "1"),
        first=0,
        t0=0.0,
        period=1.0,
        n=n,
        threshold=1.0,
        scores=pack_f32(np.ones(n)),
        flags=pack_flags(np.zeros(n, bool)),
    )
    assert len(codec.encode(batch)) - (4 * n + n // 8) < 200


def test_topics_build_and_parse() -> None:
    topic = node_topic("pump-01", Kind.RESULT)
    assert topic == "edgeml/v1/pump-01/result"
    parsed = parse_node_topic(topic)
    assert (parsed.node, parsed.kind) == ("pump-01", Kind.RESULT)
    assert model_chunk_topic("pca", "3", 7) == "edgeml/v1/models/pca/3/7"
    for bad in ("edgeml/v1/a/b/result", "edgeml/v2/a/result", "edgeml/v1/a/bogus", "x"):
        with pytest.raises(TopicError):
            parse_node_topic(bad)
    for bad_id in ("a/b", "+", "#", "", "..", "x" * 65):
        with pytest.raises(TopicError):
            node_topic(bad_id, Kind.STATUS)


@pytest.mark.parametrize("n", [1, 7, 8, 9, 256, 1000])
def test_count_flags_counts_the_marked_readings_only(n: int) -> None:
    flags = np.random.default_rng(n).random(n) < 0.3
    packed = pack_flags(flags)
    assert count_flags(packed, n) == int(flags.sum())
    if n % 8:
        # Padding bits past n are not readings, whatever they hold.
        padded = packed[:-1] + bytes([packed[-1] | (0xFF << (n % 8)) & 0xFF])
        assert count_flags(padded, n) == int(flags.sum())
