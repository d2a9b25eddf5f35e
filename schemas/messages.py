"""Typed messages of protocol version 1.

Evolution rules (msgspec's): a new field gets a default, a field's type never changes,
unknown fields are ignored on decode; a breaking change is a new topic version (``edgeml/v2``).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from schemas.manifest import Manifest

SCHEMA_VERSION = 1
# Ranges one receipt may carry: keeps a receipt under ~1 KiB however fragmented a stream is.
MAX_RECEIPT_RANGES = 32

# Every integer on the wire fits 53 bits (exact in a float64, in JSON readers and in SQLite's
# signed 64-bit INTEGER): a larger one is refused by the decoder as out of range.
MAX_INT = 2**53 - 1

NodeId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
BootId = Annotated[str, msgspec.Meta(max_length=64)]
Seq = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]
Count = Annotated[int, msgspec.Meta(ge=0, le=MAX_INT)]
SignedCount = Annotated[int, msgspec.Meta(ge=-MAX_INT, le=MAX_INT)]


class Envelope(msgspec.Struct, kw_only=True):
    """Fields every message carries.

    ``seq`` increases by one for every message a node queues in one boot; the hub drops
    redeliveries by ``(node, boot, seq)`` and counts the seqs it never saw as gaps. Status
    messages are state, not stream: their ``seq`` is the number of messages queued so far.
    """

    v: int = SCHEMA_VERSION
    node: NodeId
    boot: BootId
    seq: Seq
    ts: float


class ModelRef(msgspec.Struct, frozen=True):
    name: str
    version: str


class Capabilities(msgspec.Struct, kw_only=True):
    """What a node announces at birth; the hub checks deploys against it."""

    channels: list[str]
    sample_hz: float
    memory_mb: float
    cpu_count: Count
    onnx_opset: Count
    ort_version: str
    platform: str
    power_budget_w: float | None = None
    offline_capable: bool = True
    # What the fit check (schemas.fit) reads besides the above.
    memory_available_mb: float | None = None
    must_run_offline: bool = False
    price: float | None = None
    # The node's group or site (``[node] group``): the hub aggregates its metrics by it.
    group: str = ""


class Status(Envelope, kw_only=True):
    """Birth (online, retained) and last will (offline, retained) on the same topic."""

    state: Literal["online", "offline"]
    started_at: float
    models: list[ModelRef] = []
    capabilities: Capabilities | None = None


class ResultBatch(Envelope, kw_only=True):
    """Scores of ``n`` consecutive readings taken every ``period`` seconds from ``t0``.

    ``first`` is the index of the first reading in this boot, so a receiver can see that the
    readings of a boot are contiguous. ``scores`` is ``n`` little-endian float32; ``flags`` is
    one bit per reading (1 = anomalous), least significant bit first, ``ceil(n / 8)`` bytes.
    """

    model: ModelRef
    first: Count
    t0: float
    period: Annotated[float, msgspec.Meta(ge=0)]
    n: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)]
    threshold: float
    scores: bytes
    flags: bytes

    def __post_init__(self) -> None:
        if len(self.scores) != 4 * self.n:
            raise ValueError(f"scores has {len(self.scores)} bytes, expected 4 * n = {4 * self.n}")
        if len(self.flags) != (self.n + 7) // 8:
            raise ValueError(f"flags has {len(self.flags)} bytes, expected {(self.n + 7) // 8}")


class ChannelShare(msgspec.Struct, frozen=True):
    """A channel and its share (0..1) of what drove an anomaly score."""

    channel: str
    share: float


class Event(Envelope, kw_only=True):
    """An anomaly episode opened or closed.

    ``kind`` says whose: the machine's (the model flagged it) or a sensor's (its readings
    failed the node's checks: ``fault`` is dropout, range, spike or stuck, ``channel`` the
    sensor; ``peak_score`` and ``threshold`` are 0). Episodes are numbered per kind.
    """

    model: ModelRef
    episode: Count
    state: Literal["open", "close"]
    started: float
    ended: float | None = None
    severity: Literal["warning", "critical"]
    peak_score: float
    threshold: float
    readings: Count
    channels: list[ChannelShare] = []
    kind: Literal["machine", "sensor"] = "machine"
    channel: str = ""
    fault: str = ""


class Percentiles(msgspec.Struct, frozen=True):
    p50: float
    p95: float
    p99: float
    max: float


class SourceHealth(msgspec.Struct, kw_only=True):
    """A networked source (Modbus, OPC UA): is the device answering, and what was lost.

    ``dropouts`` counts channel values read as NaN since boot, by reason: ``disconnected``
    (no connection), ``exception`` (Modbus exception response), ``bad_status`` (OPC UA status
    not Good), ``not_numeric``, ``nonfinite``, ``late`` (the device answered slower than the
    polling period), ``reader_error``; and ``overflow``: readings discarded, not NaN, because
    the node's loop fell a whole buffer behind.
    """

    connected: bool
    readings: Count
    dropouts: dict[str, int] = {}
    reconnects: Count = 0


class Telemetry(Envelope, kw_only=True):
    """Health of the node over the last ``interval_s`` seconds; counters are since boot."""

    interval_s: float
    readings: Count
    readings_per_s: float
    latency_ms: Percentiles
    rss_bytes: Count
    cpu_percent: float
    power_w: float
    power_method: str
    outbox_depth: Count
    outbox_bytes: Count
    dropped: Count
    errors: dict[str, SignedCount] = {}
    model: ModelRef | None = None
    rollbacks: Count = 0
    source: SourceHealth | None = None  # None for a CSV replay or the simulator
    # Readings that failed the sensor checks since boot, by "channel:fault".
    sensor_faults: dict[str, int] = {}


class ChannelDrift(msgspec.Struct, kw_only=True):
    """One channel against the model's reference profile.

    ``counts`` are readings per reference bin (mergeable: add the counts of intervals or
    nodes). ``psi`` is raw; under the null (stationary readings from the reference
    distribution, lag-1 autocorrelated) ``n_eff * psi`` is about chi-square with
    ``len(counts) - 1`` degrees of freedom, ``n_eff = n (1 - r) / (1 + r)`` for the interval's
    lag-1 autocorrelation ``r``; ``psi_null`` is its expectation and ``psi_p`` the p-value.
    ``ks`` and ``wasserstein_sd`` are distances between the binned and reference distributions
    (Wasserstein over the inner bins, in reference SDs). ``change`` is the CUSUM's peak over the
    interval as a fraction of its threshold (schemas.drift); ``alarm`` is ``change >= 1``.
    """

    channel: str
    psi: float
    mean_shift_sd: float
    mean: float
    std: float
    counts: list[int] = []
    n_eff: float = 0.0
    psi_null: float = 0.0
    psi_p: float = 1.0
    ks: float = 0.0
    wasserstein_sd: float = 0.0
    change: float = 0.0
    alarm: bool = False


class ScoreStats(msgspec.Struct, kw_only=True):
    mean: float
    p50: float
    p95: float
    p99: float
    flagged_fraction: float
    psi: float
    # As for ChannelDrift; the score's CUSUM is one-sided (upwards).
    counts: list[int] = []
    n_eff: float = 0.0
    psi_null: float = 0.0
    psi_p: float = 1.0
    ks: float = 0.0
    change: float = 0.0
    alarm: bool = False


class Drift(Envelope, kw_only=True):
    """Drift statistics of the readings scored between ``start`` and ``end``."""

    model: ModelRef
    start: float
    end: float
    n: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)]
    channels: list[ChannelDrift]
    score: ScoreStats


class ArmFigures(msgspec.Struct, kw_only=True):
    """One model's behaviour over a shadow run's readings so far.

    ``score_counts`` is the histogram of score / threshold on ``schemas.behaviour`` bins;
    ``flagged`` counts what the model's alarm rule would flag (the candidate's flags raise
    nothing); ``unscored`` counts readings the model left NaN (errors included).
    """

    model: ModelRef
    threshold: float
    readings: Count
    flagged: Count
    unscored: Count = 0
    episodes: Count = 0
    score_mean: float = 0.0
    score_p50: float = 0.0
    score_p99: float = 0.0
    score_counts: list[int] = []
    latency_p99_ms: float = 0.0


class ShadowReport(Envelope, kw_only=True):
    """A shadow run's figures, cumulative since it started (node -> hub, every drift interval
    and once at the end). ``agreement`` is the fraction of readings scored by both arms that
    they flagged alike; ``cpu_share`` is the candidate's scoring time over wall time."""

    command: str
    state: Literal["running", "done", "stopped", "over_budget", "failed"]
    reason: str = ""
    start: float
    end: float
    active: ArmFigures
    candidate: ArmFigures
    agreement: float
    cpu_share: float


class Capture(Envelope, kw_only=True):
    """One chunk of raw readings captured for training (``data``: ``n x len(channels)``
    little-endian float32, row-major)."""

    command: str
    chunk: Count
    chunks: Annotated[int, msgspec.Meta(ge=1, le=MAX_INT)]
    channels: list[str]
    t0: float
    period: float
    n: Count
    data: bytes

    def __post_init__(self) -> None:
        expected = 4 * self.n * len(self.channels)
        if len(self.data) != expected:
            raise ValueError(f"data has {len(self.data)} bytes, expected {expected}")
        if self.chunk >= self.chunks:
            raise ValueError(f"chunk {self.chunk} is not below chunks {self.chunks}")


AckStatus = Literal["accepted", "applied", "rejected", "failed"]


class Ack(Envelope, kw_only=True):
    """What became of a command."""

    command: str
    command_type: str
    status: AckStatus
    reason: str = ""
    model: ModelRef | None = None
    detail: dict[str, str] = {}


class CommandBase(Envelope, kw_only=True, tag_field="type"):
    """Fields of every command. ``node`` is the target; ``boot``/``seq`` are the hub's.

    ``signature`` is reserved for the hub's Ed25519 signature over the command.
    """

    id: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    issued_at: float
    expires_at: float
    signature: bytes | None = None


class Deploy(CommandBase, kw_only=True, tag="deploy"):
    """Fetch the artifact's chunks from the models topic, check, warm up, then switch."""

    manifest: Manifest
    size: Count
    chunk_size: Annotated[int, msgspec.Meta(ge=1)]
    chunks: Annotated[int, msgspec.Meta(ge=1)]


class Rollback(CommandBase, kw_only=True, tag="rollback"):
    """Go back one step in the node's model history, or to version ``to`` of the active
    model's name when given (it must still be installed on the node)."""

    to: str | None = None


class Retrain(CommandBase, kw_only=True, tag="retrain"):
    """Capture ``readings`` readings (the ``next`` or the ``last`` ones) and upload them."""

    readings: Annotated[int, msgspec.Meta(ge=1)]
    mode: Literal["next", "last"] = "next"


class Ping(CommandBase, kw_only=True, tag="ping"):
    """Answer with the active model and uptime."""


class Shadow(CommandBase, kw_only=True, tag="shadow"):
    """Fetch a candidate model like a deploy, then score every reading with it beside the
    active model for ``duration_s`` and report both (``ShadowReport``). The candidate raises
    no alarms and publishes no results; it is stopped (state ``over_budget``) when it takes
    more than ``cpu_budget`` of one core. A new shadow command replaces a running one."""

    manifest: Manifest
    size: Count
    chunk_size: Annotated[int, msgspec.Meta(ge=1)]
    chunks: Annotated[int, msgspec.Meta(ge=1)]
    duration_s: Annotated[float, msgspec.Meta(gt=0, le=7 * 86400)]
    cpu_budget: Annotated[float, msgspec.Meta(gt=0, le=1)] = 0.25


class StopShadow(CommandBase, kw_only=True, tag="stop_shadow"):
    """End the running shadow run now (its last report says ``stopped``)."""


Command = Deploy | Rollback | Retrain | Ping | Shadow | StopShadow


Range = tuple[Seq, Seq]


class Receipt(Envelope, kw_only=True):
    """The hub's cumulative confirmation of one boot of a node's stream (hub -> node).

    ``node`` is the node it confirms; ``boot``/``seq`` are the hub's own. Every seq in a
    half-open range ``[start, end)`` of ``ranges`` (ascending, at most ``MAX_RECEIPT_RANGES``)
    of the stream ``of_boot`` is durably applied (or durably refused), so the node may delete
    those messages from its outbox. A receipt only ever adds: it never takes a range back.
    """

    of_boot: BootId
    ranges: list[Range] = []


class ModelChunk(Envelope, kw_only=True):
    """One chunk of a model artifact (``node`` names the publishing hub)."""

    model: ModelRef
    index: Count
    chunks: Annotated[int, msgspec.Meta(ge=1)]
    data: bytes
