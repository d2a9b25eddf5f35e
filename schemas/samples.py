"""One fixed sample of every message type: the source of the golden payloads."""

from __future__ import annotations

from typing import Final, TypedDict

import msgspec

from schemas.alarm import AlarmSpec
from schemas.fit import Needs
from schemas.manifest import (
    InputSpec,
    Manifest,
    ModelCard,
    OutputSpec,
    Profile,
    ReferenceProfile,
    Resources,
    TrainingData,
    Validation,
)
from schemas.messages import (
    Ack,
    ArmFigures,
    Capabilities,
    Capture,
    ChannelDrift,
    ChannelShare,
    Deploy,
    Drift,
    Event,
    ModelChunk,
    ModelRef,
    Percentiles,
    Ping,
    Receipt,
    ResultBatch,
    Retrain,
    Rollback,
    ScoreStats,
    Shadow,
    ShadowReport,
    SourceHealth,
    Status,
    StopShadow,
    Telemetry,
)
from schemas.packing import pack_f32, pack_flags


class _Env(TypedDict):
    node: str
    boot: str
    ts: float


class _Expiry(TypedDict):
    issued_at: float
    expires_at: float


_NODE = _Env(node="pump-01", boot="5f0c2a9e", ts=1767225600.25)
_MODEL = ModelRef("pump-pca", "3")
_CHANNELS = ["pressure", "current"]
_PROFILE = Profile(mean=1.0, std=0.25, edges=[0.0, 0.8, 1.2, 2.0], fractions=[0.2, 0.6, 0.2])

MANIFEST: Final = Manifest(
    name="pump-pca",
    version="3",
    created_at=1767225000.0,
    trained_by="cloud-hub train",
    algorithm="pca-q",
    input=InputSpec(name="window", channels=_CHANNELS, window=8),
    output=OutputSpec(score="score", contributions="contributions"),
    threshold=4.5,
    reference=ReferenceProfile(channels={c: _PROFILE for c in _CHANNELS}, score=_PROFILE),
    resources=Resources(
        latency_ms_p50=0.05,
        latency_ms_p99=0.2,
        measured_batch=64,
        memory_mb=12.0,
        size_bytes=2048,
        opset=17,
    ),
    sha256="0" * 64,
    training={"readings": 400, "components": 3},
    alarm=AlarmSpec(open_after=1, open_within=1, close_after=30),
    needs=Needs(memory_mb=1.5, power_w=0.001, opset=17, channels=["current", "pressure"]),
    card=ModelCard(
        features=["level(current)", "slope(temperature)", "spread(current)"],
        threshold_rule="2 x the 99% quantile of scores on the last 30% of the training readings",
        training=TrainingData(readings=400, sources=["pump-01.csv"], period_s=1.0),
        latency_us_per_reading=0.9,
        memory_mb=1.5,
        size_bytes=2847,
        validation=Validation(
            protocol="per recording: fit on the first 400 readings, score the rest",
            files=16,
            readings=11760,
            f1=0.85,
            far=0.06,
            mar=0.22,
        ),
    ),
)

_COMMAND = _Env(node="pump-01", boot="hub-7d1e", ts=1767225601.0)
_EXPIRY = _Expiry(issued_at=1767225601.0, expires_at=1767225901.0)

SAMPLES: Final[dict[str, msgspec.Struct]] = {
    "status": Status(
        **_NODE,
        seq=0,
        state="online",
        started_at=1767225590.0,
        models=[_MODEL],
        capabilities=Capabilities(
            channels=_CHANNELS,
            sample_hz=1.0,
            memory_mb=3906.0,
            cpu_count=4,
            onnx_opset=21,
            ort_version="1.20.0",
            platform="Linux-aarch64",
            power_budget_w=15.0,
            memory_available_mb=2750.0,
            price=120.0,
        ),
    ),
    "result": ResultBatch(
        **_NODE,
        seq=17,
        model=_MODEL,
        first=1200,
        t0=1767225599.0,
        period=1.0,
        n=3,
        threshold=4.5,
        scores=pack_f32([0.5, 1.25, 7.0]),
        flags=pack_flags([False, False, True]),
    ),
    "event": Event(
        **_NODE,
        seq=18,
        model=_MODEL,
        episode=2,
        state="open",
        started=1767225601.0,
        severity="warning",
        peak_score=7.0,
        threshold=4.5,
        readings=3,
        channels=[ChannelShare("pressure", 0.75), ChannelShare("current", 0.25)],
    ),
    "telemetry": Telemetry(
        **_NODE,
        seq=19,
        interval_s=10.0,
        readings=10,
        readings_per_s=1.0,
        latency_ms=Percentiles(p50=0.05, p95=0.09, p99=0.12, max=0.4),
        rss_bytes=61_440_000,
        cpu_percent=2.5,
        power_w=3.1,
        power_method="model: 2.7 W idle + 1.6 W per busy core",
        outbox_depth=0,
        outbox_bytes=0,
        dropped=0,
        errors={"decode": 1},
        model=_MODEL,
        source=SourceHealth(
            connected=True, readings=10, dropouts={"disconnected": 16}, reconnects=1
        ),
    ),
    "drift": Drift(
        **_NODE,
        seq=20,
        model=_MODEL,
        start=1767225540.0,
        end=1767225600.0,
        n=60,
        channels=[
            ChannelDrift(channel="pressure", psi=0.31, mean_shift_sd=1.5, mean=1.4, std=0.2),
            ChannelDrift(channel="current", psi=0.01, mean_shift_sd=0.1, mean=1.0, std=0.25),
        ],
        score=ScoreStats(mean=1.1, p50=0.9, p95=3.0, p99=6.5, flagged_fraction=0.05, psi=0.2),
    ),
    "capture": Capture(
        **_NODE,
        seq=21,
        command="c-0001",
        chunk=0,
        chunks=1,
        channels=_CHANNELS,
        t0=1767225599.0,
        period=1.0,
        n=2,
        data=pack_f32([[1.0, 2.0], [1.5, 2.5]]),
    ),
    "ack": Ack(
        **_NODE, seq=22, command="c-0001", command_type="deploy", status="applied", model=_MODEL
    ),
    "shadow": ShadowReport(
        **_NODE,
        seq=23,
        command="c-0005",
        state="running",
        start=1767225540.0,
        end=1767225600.0,
        active=ArmFigures(
            model=_MODEL,
            threshold=4.5,
            readings=60,
            flagged=3,
            episodes=1,
            score_mean=1.1,
            score_p50=0.9,
            score_p99=6.5,
            score_counts=[10, 12, 20, 8, 5, 2, 1, 2, 0, 0],
            latency_p99_ms=0.12,
        ),
        candidate=ArmFigures(
            model=ModelRef("pump-pca", "4"),
            threshold=5.0,
            readings=60,
            flagged=1,
            score_mean=0.9,
            score_p50=0.8,
            score_p99=5.5,
            score_counts=[12, 14, 20, 8, 4, 1, 1, 0, 0, 0],
            latency_p99_ms=0.11,
        ),
        agreement=0.9667,
        cpu_share=0.004,
    ),
    "cmd_deploy": Deploy(
        **_COMMAND,
        seq=1,
        id="c-0001",
        **_EXPIRY,
        manifest=MANIFEST,
        size=2048,
        chunk_size=1024,
        chunks=2,
    ),
    "cmd_rollback": Rollback(**_COMMAND, seq=2, id="c-0002", **_EXPIRY),
    "cmd_retrain": Retrain(**_COMMAND, seq=3, id="c-0003", **_EXPIRY, readings=600),
    "cmd_ping": Ping(**_COMMAND, seq=4, id="c-0004", **_EXPIRY),
    "cmd_shadow": Shadow(
        **_COMMAND,
        seq=7,
        id="c-0005",
        **_EXPIRY,
        manifest=MANIFEST,
        size=2048,
        chunk_size=1024,
        chunks=2,
        duration_s=3600.0,
    ),
    "cmd_stop_shadow": StopShadow(**_COMMAND, seq=8, id="c-0006", **_EXPIRY),
    "model_chunk": ModelChunk(
        node="hub",
        boot="hub-7d1e",
        seq=5,
        ts=1767225601.5,
        model=_MODEL,
        index=0,
        chunks=2,
        data=b"\x08\x07" * 8,
    ),
    "receipt": Receipt(
        node="pump-01",
        boot="hub-7d1e",
        seq=6,
        ts=1767225602.0,
        of_boot=_NODE["boot"],
        ranges=[(0, 23), (30, 31)],
    ),
}


def message_type_of(sample_name: str) -> str:
    """The codec message type a sample decodes as (``cmd_deploy`` -> ``cmd``)."""
    return "cmd" if sample_name.startswith("cmd_") else sample_name
