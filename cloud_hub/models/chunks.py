"""The chunk server: publishes the model chunks that nodes ask for in their deploy acks.

A node that accepted a deploy lists the chunks it still needs in ``detail["need"]``; the hub
publishes exactly those on ``edgeml/v1/models/{name}/{version}/{index}``. Requests only queue
work; :meth:`ChunkServer.pump` publishes a bounded number per call, so the ingest loop never
waits for a large artifact. paho holds a bounded number of outgoing messages: when it says
"full" the chunk stays at the head of the queue and the next pump retries it. The same chunk
asked for by several nodes before it went out is published once: every node waiting for that
model version is subscribed to the same topic.
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final, Literal, Protocol

from cloud_hub.commands.identity import HubIdentity
from cloud_hub.models.catalog import CatalogError, UnknownModel
from schemas.codec import encode
from schemas.commands import DEFAULT_CHUNK_SIZE, NEED, parse_ranges
from schemas.messages import Ack, ModelChunk, ModelRef
from schemas.topics import model_chunk_topic

log = logging.getLogger(__name__)

PublishOutcome = Literal["queued", "full", "refused"]
REFUSAL_REASONS: Final = (
    "unknown_model",
    "unreadable_model",
    "bad_request",
    "queue_full",
    "publish_refused",
)
MAX_PENDING: Final = 100_000
PUMP_BUDGET: Final = 200
_CACHED_ARTIFACTS: Final = 4


class ChunkPublisher(Protocol):
    """Hands one QoS 1 message to the MQTT client without waiting for the broker."""

    def offer(self, topic: str, payload: bytes) -> PublishOutcome:
        """``queued``; ``full`` (try again later); ``refused`` (will never go)."""
        ...


class ArtifactSource(Protocol):
    """Model bytes by name and version (the catalog); UnknownModel / CatalogError."""

    def artifact(self, name: str, version: str) -> bytes: ...


@dataclass(frozen=True, slots=True)
class _Job:
    model: ModelRef
    chunk_size: int
    index: int


@dataclass(frozen=True, slots=True)
class _Ready:
    job: _Job
    topic: str
    payload: bytes


class ChunkServer:
    """Turns deploy acks into queued chunk publishes; ``pump`` sends them."""

    def __init__(
        self,
        artifacts: ArtifactSource,
        chunk_size_of: Callable[[str], int | None],
        publisher: ChunkPublisher,
        identity: HubIdentity,
        *,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self._artifacts = artifacts
        self._chunk_size_of = chunk_size_of
        self._publisher = publisher
        self._identity = identity
        self._max_pending = max_pending
        self._queue: deque[_Job] = deque()
        self._queued: set[_Job] = set()
        self._ready: _Ready | None = None
        self._cache: OrderedDict[ModelRef, bytes] = OrderedDict()
        self.published = 0
        self.refused: Counter[str] = Counter()

    @property
    def pending(self) -> int:
        """Chunks waiting to be handed to the MQTT client."""
        return len(self._queue)

    def on_ack(self, ack: Ack, now: float) -> int:
        """Queue the chunks a deploy's accepted ack asks for; return how many were new."""
        need = ack.detail.get(NEED)
        # A shadow run fetches its candidate like a deploy.
        if ack.command_type not in ("deploy", "shadow") or ack.status != "accepted" or need is None:
            return 0
        if ack.model is None:
            return self._refuse("bad_request", ack, "the accepted ack names no model")
        chunk_size = self._chunk_size_of(ack.command) or DEFAULT_CHUNK_SIZE
        try:
            size = len(self._artifact(ack.model))
        except UnknownModel:
            return self._refuse("unknown_model", ack, "the model is not in the catalog")
        except CatalogError as exc:
            return self._refuse("unreadable_model", ack, str(exc))
        try:
            indexes = parse_ranges(need, chunk_count(size, chunk_size))
        except ValueError as exc:
            return self._refuse("bad_request", ack, str(exc))
        return self._enqueue(ack, ack.model, indexes, chunk_size)

    def _enqueue(self, ack: Ack, model: ModelRef, indexes: list[int], chunk_size: int) -> int:
        added = 0
        for index in indexes:
            job = _Job(model, chunk_size, index)
            if job in self._queued:
                continue
            if len(self._queue) >= self._max_pending:
                self._refuse("queue_full", ack, f"{len(self._queue)} chunks already pending")
                break
            self._queue.append(job)
            self._queued.add(job)
            added += 1
        log.debug("%s asked for %d new chunks of %s", ack.node, added, _ref(model))
        return added

    def pump(self, now: float, budget: int = PUMP_BUDGET) -> int:
        """Hand up to ``budget`` pending chunks to the publisher; return how many went."""
        sent = 0
        while sent < budget and (self._ready is not None or self._queue):
            ready = self._ready or self._prepare(self._queue[0], now)
            if ready is None:
                self._pop()
                continue
            outcome = self._publisher.offer(ready.topic, ready.payload)
            if outcome == "full":
                self._ready = ready  # keep its seq: retried as is on the next pump
                break
            self._ready = None
            self._pop()
            if outcome == "refused":
                self.refused["publish_refused"] += 1
                log.error("the MQTT client refused chunk %s", ready.topic)
                continue
            self.published += 1
            sent += 1
        return sent

    def _pop(self) -> None:
        self._queued.discard(self._queue.popleft())

    def _prepare(self, job: _Job, now: float) -> _Ready | None:
        try:
            data = self._artifact(job.model)
        except CatalogError as exc:
            # Removed or damaged since the request: the node asks again or fails the deploy.
            self.refused["unreadable_model"] += 1
            log.warning("cannot publish chunk %d of %s: %s", job.index, _ref(job.model), exc)
            return None
        total = chunk_count(len(data), job.chunk_size)
        start = job.index * job.chunk_size
        message = ModelChunk(
            node=self._identity.sender,
            boot=self._identity.boot,
            seq=self._identity.next_seq(),
            ts=now,
            model=job.model,
            index=job.index,
            chunks=total,
            data=data[start : start + job.chunk_size],
        )
        topic = model_chunk_topic(job.model.name, job.model.version, job.index)
        return _Ready(job, topic, encode(message))

    def _artifact(self, model: ModelRef) -> bytes:
        data = self._cache.get(model)
        if data is None:
            data = self._artifacts.artifact(model.name, model.version)
            self._cache[model] = data
            if len(self._cache) > _CACHED_ARTIFACTS:
                self._cache.popitem(last=False)
        else:
            self._cache.move_to_end(model)
        return data

    def _refuse(self, reason: str, ack: Ack, detail: str) -> int:
        self.refused[reason] += 1
        model = _ref(ack.model) if ack.model else "no model"
        log.warning(
            "not serving chunks to %s for command %s (%s): %s: %s",
            ack.node,
            ack.command,
            model,
            reason,
            detail,
        )
        return 0


def _ref(model: ModelRef) -> str:
    return f"{model.name}@{model.version}"


def chunk_count(size: int, chunk_size: int) -> int:
    """How many chunks :func:`schemas.commands.split_artifact` makes of ``size`` bytes."""
    return max(1, -(-size // chunk_size))
