"""Topic names of protocol version 1: builders and one parser.

Every node topic is ``edgeml/v1/{node}/{kind}``; model artifact chunks travel on
``edgeml/v1/models/{name}/{version}/{chunk}``.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import NamedTuple

ROOT = "edgeml/v1"
_ID = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class Kind(StrEnum):
    """The per-node topic kinds, named as they appear in the topic."""

    STATUS = "status"
    RESULT = "result"
    EVENT = "event"
    TELEMETRY = "telemetry"
    DRIFT = "drift"
    CAPTURE = "capture"
    ACK = "ack"
    SHADOW = "shadow"
    CMD = "cmd"
    RECEIPT = "receipt"


NODE_TO_HUB = (
    Kind.STATUS,
    Kind.RESULT,
    Kind.EVENT,
    Kind.TELEMETRY,
    Kind.DRIFT,
    Kind.CAPTURE,
    Kind.ACK,
    Kind.SHADOW,
)


class TopicError(ValueError):
    """A topic or identifier that the protocol does not allow."""


def check_id(value: str, what: str = "node id") -> str:
    """Return ``value`` if it is a valid node id, model name or version, else raise."""
    if not _ID.match(value) or value in {".", ".."}:
        raise TopicError(f"invalid {what} {value!r}: use 1-64 of A-Z a-z 0-9 _ . -")
    return value


def node_topic(node: str, kind: Kind) -> str:
    """``edgeml/v1/{node}/{kind}``."""
    return f"{ROOT}/{check_id(node)}/{kind.value}"


def subscription(kind: Kind, root: str = ROOT) -> str:
    """The wildcard that matches ``kind`` for every node."""
    return f"{root}/+/{kind.value}"


def model_chunk_topic(name: str, version: str, chunk: int) -> str:
    """``edgeml/v1/models/{name}/{version}/{chunk}``."""
    if chunk < 0:
        raise TopicError(f"chunk index must be >= 0, got {chunk}")
    return (
        f"{ROOT}/models/{check_id(name, 'model name')}/{check_id(version, 'model version')}/{chunk}"
    )


class NodeTopic(NamedTuple):
    """A parsed node topic (a named tuple: the hub parses one per message it receives)."""

    node: str
    kind: Kind


_KINDS = {kind.value: kind for kind in Kind}  # a dict lookup, not an Enum call per topic


def parse_node_topic(topic: str) -> NodeTopic:
    """Split ``edgeml/v1/{node}/{kind}``; raise TopicError for anything else."""
    prefix = ROOT + "/"
    if not topic.startswith(prefix):
        raise TopicError(f"topic {topic!r} is not under {ROOT}/")
    parts = topic[len(prefix) :].split("/")
    if len(parts) != 2:
        raise TopicError(f"topic {topic!r} is not {ROOT}/<node>/<kind>")
    node, kind = parts
    parsed = _KINDS.get(kind)
    if parsed is None:
        raise TopicError(f"topic {topic!r} has unknown kind {kind!r}")
    return NodeTopic(check_id(node), parsed)
