"""What ``serve`` does with command acks: count them, record them, serve the chunks they ask for."""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass
from typing import Final, Protocol

from cloud_hub.commands.ledger import LedgerError
from cloud_hub.models.capture_store import CaptureStore
from cloud_hub.models.chunks import ChunkServer
from schemas.messages import Ack

log = logging.getLogger(__name__)

# The label values of edgeml_command_acks_total: a node may send any command_type string.
ACK_TYPES: Final = ("deploy", "rollback", "retrain", "ping", "shadow", "stop_shadow", "unknown")
ACK_STATUSES: Final = ("accepted", "applied", "rejected", "failed")


class AckLedger(Protocol):
    """Where acks are recorded (the command ledger)."""

    def record_ack(self, ack: Ack, received_at: float) -> bool: ...


class AckConsumer(Protocol):
    """Something that acts on acks (the chunk server)."""

    def on_ack(self, ack: Ack, now: float) -> int: ...


def ack_type(command_type: str) -> str:
    """``command_type`` as a bounded label value."""
    return command_type if command_type in ACK_TYPES else "unknown"


class AckTracker:
    """The ingest's AckSink in ``serve``: counts, records and forwards every new ack."""

    def __init__(self, ledger: AckLedger | None, consumers: list[AckConsumer]) -> None:
        self._ledger = ledger
        self._consumers = consumers
        self.acks: Counter[tuple[str, str]] = Counter()

    def on_ack(self, ack: Ack, now: float) -> None:
        """Count and record ``ack``, then let the consumers act on it."""
        self.acks[ack_type(ack.command_type), ack.status] += 1
        if ack.status != "accepted":
            model = f" ({ack.model.name}@{ack.model.version})" if ack.model else ""
            reason = f": {ack.reason}" if ack.reason else ""
            log.info(
                "%s %s %s %s%s%s",
                ack.node,
                ack.command_type,
                ack.command,
                ack.status,
                model,
                reason,
            )
        if self._ledger is not None:
            try:
                self._ledger.record_ack(ack, now)
            except LedgerError as exc:
                # The ack still takes effect; only its history line is missing.
                log.error("%s", exc)
        for consumer in self._consumers:
            consumer.on_ack(ack, now)


@dataclass(frozen=True, slots=True)
class LifecycleCounts:
    """The model-lifecycle numbers of ``serve`` at one scrape (label values: fixed enums)."""

    acks: dict[tuple[str, str], int]
    chunks_published: int
    chunks_pending: int
    chunk_refusals: dict[str, int]
    captures_completed: int
    capture_refusals: dict[str, int]


def lifecycle_counts(
    acks: AckTracker, chunks: ChunkServer, captures: CaptureStore
) -> LifecycleCounts:
    """A copy of the counters (taken under the hub's lock: the loop changes them)."""
    return LifecycleCounts(
        acks=dict(acks.acks),
        chunks_published=chunks.published,
        chunks_pending=chunks.pending,
        chunk_refusals=dict(chunks.refused),
        captures_completed=captures.completed,
        capture_refusals=dict(captures.refused),
    )
