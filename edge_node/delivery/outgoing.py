"""Turns the node's results into protocol messages with their envelope (pure)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypedDict

import msgspec

from edge_node.lifecycle.capture import Segment, upload_chunks
from edge_node.scoring.batcher import PendingBatch
from edge_node.scoring.drift import DriftReport
from edge_node.scoring.events import EpisodeChange
from edge_node.scoring.pipeline import Scored
from edge_node.scoring.validation import SensorChange
from schemas.messages import Capture, ChannelShare, Drift, Event, ModelRef, ResultBatch
from schemas.packing import pack_f32, pack_flags
from schemas.topics import Kind

Outgoing = tuple[Kind, msgspec.Struct]


class Env(TypedDict):
    node: str
    boot: str
    seq: int
    ts: float


@dataclass
class Sequencer:
    """Hands out the per-boot ``seq`` of every message the node queues."""

    node: str
    boot: str
    next_seq: int = 0

    def take(self, ts: float) -> Env:
        env = Env(node=self.node, boot=self.boot, seq=self.next_seq, ts=ts)
        self.next_seq += 1
        return env

    def peek(self, ts: float) -> Env:
        """An envelope that does not use up a seq (for status messages)."""
        return Env(node=self.node, boot=self.boot, seq=self.next_seq, ts=ts)


def result_message(env: Env, batch: PendingBatch) -> ResultBatch:
    return ResultBatch(
        **env,
        model=batch.model,
        first=batch.first,
        t0=batch.t0,
        period=batch.period,
        n=batch.n,
        threshold=batch.threshold,
        scores=pack_f32(batch.scores),
        flags=pack_flags(batch.flags),
    )


def event_message(env: Env, change: EpisodeChange, model: ModelRef, threshold: float) -> Event:
    return Event(
        **env,
        model=model,
        episode=change.episode,
        state=change.state,
        started=change.started,
        ended=change.ended,
        severity=change.severity,
        peak_score=change.peak_score,
        threshold=threshold,
        readings=change.readings,
        channels=[ChannelShare(name, share) for name, share in change.channels],
    )


def sensor_message(env: Env, change: SensorChange, model: ModelRef) -> Event:
    """A sensor-fault episode as an event of kind "sensor" (no score: the model did not
    flag it, the node's checks did)."""
    return Event(
        **env,
        model=model,
        episode=change.episode,
        state=change.state,
        started=change.started,
        ended=change.ended,
        severity="warning",
        peak_score=0.0,
        threshold=0.0,
        readings=change.readings,
        channels=[ChannelShare(change.channel, 1.0)],
        kind="sensor",
        channel=change.channel,
        fault=change.fault,
    )


def drift_message(env: Env, report: DriftReport, model: ModelRef) -> Drift:
    return Drift(
        **env,
        model=model,
        start=report.start,
        end=report.end,
        n=report.n,
        channels=report.channels,
        score=report.score,
    )


def capture_messages(
    seq: Sequencer, command_id: str, channels: list[str], segments: list[Segment], ts: float
) -> list[Outgoing]:
    """A retrain's captured ``segments`` as capture messages (chunks of at most 128 KiB)."""
    parts = upload_chunks(segments, len(channels))
    return [
        (
            Kind.CAPTURE,
            Capture(
                **seq.take(ts),
                command=command_id,
                chunk=i,
                chunks=len(parts),
                channels=channels,
                t0=part.t0,
                period=part.period,
                n=part.n,
                data=pack_f32(part.values),
            ),
        )
        for i, part in enumerate(parts)
    ]


def scored_messages(seq: Sequencer, scored: Scored, ts: float) -> list[Outgoing]:
    """Messages of what the pipeline produced, in order: drift reports and episode changes
    of a model that is going, then result batches."""
    out: list[Outgoing] = [
        (Kind.DRIFT, drift_message(seq.take(ts), d.report, d.model)) for d in scored.drift
    ]
    out += [
        (Kind.EVENT, event_message(seq.take(ts), c.change, c.model, c.threshold))
        for c in scored.changes
    ]
    out += [(Kind.EVENT, sensor_message(seq.take(ts), f.change, f.model)) for f in scored.sensors]
    out += [(Kind.RESULT, result_message(seq.take(ts), batch)) for batch in scored.batches]
    return out
