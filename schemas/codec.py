"""MessagePack encoding and validated decoding of every message type."""

from __future__ import annotations

import re
from typing import Any, Final

import msgspec

from schemas.messages import (
    Ack,
    Capture,
    Command,
    Drift,
    Event,
    ModelChunk,
    Receipt,
    ResultBatch,
    ShadowReport,
    Status,
    Telemetry,
)
from schemas.topics import Kind

# One decoded type per topic kind; "model_chunk" is the models/{name}/{version}/{chunk} topic.
MESSAGE_TYPES: Final[dict[str, Any]] = {
    Kind.STATUS.value: Status,
    Kind.RESULT.value: ResultBatch,
    Kind.EVENT.value: Event,
    Kind.TELEMETRY.value: Telemetry,
    Kind.DRIFT.value: Drift,
    Kind.CAPTURE.value: Capture,
    Kind.ACK.value: Ack,
    Kind.SHADOW.value: ShadowReport,
    Kind.CMD.value: Command,
    Kind.RECEIPT.value: Receipt,
    "model_chunk": ModelChunk,
}

_encoder = msgspec.msgpack.Encoder()
_decoders: dict[str, msgspec.msgpack.Decoder[Any]] = {
    name: msgspec.msgpack.Decoder(typ) for name, typ in MESSAGE_TYPES.items()
}
_AT_PATH = re.compile(r" - at `\$\.?([^`]*)`$")
_RANGE = re.compile(r"Expected `int` (<=|>=) ")
_MISSING = re.compile(r"missing required field `([^`]+)`")


class DecodeError(ValueError):
    """A payload that is not a valid message of its type.

    ``reason`` is a short, bounded word fit for a metric label: ``malformed`` (not
    MessagePack), ``too_deep`` (nested deeper than the decoder's recursion limit, about 1,000
    levels), ``out_of_range`` (an integer outside its field's bounds, at most 2**53 - 1),
    ``invalid`` (any other wrong or missing field) or ``unknown_type``.
    """

    def __init__(self, message_type: str, field: str, detail: str, reason: str, topic: str = ""):
        self.message_type = message_type
        self.field = field
        self.detail = detail
        self.reason = reason
        self.topic = topic
        where = f" on {topic}" if topic else ""
        super().__init__(f"bad {message_type} message{where}: field {field!r}: {detail}")


def encode(message: msgspec.Struct) -> bytes:
    """Encode any protocol message as MessagePack."""
    return _encoder.encode(message)


def decode(message_type: str, data: bytes, topic: str = "") -> Any:
    """Decode and validate ``data`` as ``message_type`` (a topic kind or ``model_chunk``)."""
    decoder = _decoders.get(message_type)
    if decoder is None:
        raise DecodeError(message_type, "$", "no such message type", "unknown_type", topic)
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        field, detail = _split(str(exc))
        reason = "out_of_range" if _RANGE.match(detail) else "invalid"
        raise DecodeError(message_type, field, detail, reason, topic) from None
    except RecursionError:
        raise DecodeError(message_type, "$", "nested too deeply", "too_deep", topic) from None
    except msgspec.DecodeError as exc:
        raise DecodeError(message_type, "$", str(exc), "malformed", topic) from None


def _split(text: str) -> tuple[str, str]:
    """Pull the field path out of a msgspec error message."""
    field = ""
    at = _AT_PATH.search(text)
    if at:
        field = at.group(1)
        text = text[: at.start()]
    missing = _MISSING.search(text)
    if missing:
        field = f"{field}.{missing.group(1)}" if field else missing.group(1)
    return field or "$", text
