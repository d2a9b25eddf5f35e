"""The model manifest: what a node needs to know to run, check and watch a model.

Stored as ``manifest.json`` next to ``model.onnx`` and carried inside deploy commands.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from schemas.alarm import AlarmSpec
from schemas.drift import DriftSpec
from schemas.fit import Needs

MANIFEST_SCHEMA = 1

# A model folder (node store, hub catalog, trainer output) holds exactly these two files.
MODEL_FILE = "model.onnx"
MANIFEST_FILE = "manifest.json"
# Seconds a sensor may repeat one value before it counts as stuck, unless the manifest says.
DEFAULT_STUCK_S = 30.0


class InputSpec(msgspec.Struct, kw_only=True):
    """The model's one input: float32 ``[batch, window, len(channels)]`` raw readings."""

    name: str
    channels: list[str]
    window: Annotated[int, msgspec.Meta(ge=1)]
    dtype: Literal["float32"] = "float32"
    dynamic_batch: bool = True


class OutputSpec(msgspec.Struct, kw_only=True):
    """Output names: ``score`` ``[batch]``; ``contributions`` (optional) ``[batch, channels]``."""

    score: str
    contributions: str | None = None


class Profile(msgspec.Struct, kw_only=True):
    """A reference distribution: mean, std and histogram ``fractions`` between ``edges``.

    ``edges`` has one more entry than ``fractions``; the outer bins are open-ended, so the
    first and last edge only bound the bins for display.
    """

    mean: float
    std: float
    edges: list[float]
    fractions: list[float]


class ReferenceProfile(msgspec.Struct, kw_only=True):
    """What healthy data looked like at training time, per channel and for the score."""

    channels: dict[str, Profile]
    score: Profile


class SensorSpec(msgspec.Struct, kw_only=True, frozen=True):
    """What a working sensor reads: values that do not stay the same for ``stuck_s`` seconds or
    more and, when given, lie in its physical range ``[low, high]``
    (edge_node.scoring.validation)."""

    stuck_s: Annotated[float, msgspec.Meta(gt=0)] = DEFAULT_STUCK_S
    low: float | None = None
    high: float | None = None

    def __post_init__(self) -> None:
        if self.low is not None and self.high is not None and not self.low < self.high:
            raise ValueError(f"sensor range needs low < high, got [{self.low}, {self.high}]")


class Resources(msgspec.Struct, kw_only=True):
    """Resource needs measured when the model was built."""

    latency_ms_p50: float
    latency_ms_p99: float
    measured_batch: int
    memory_mb: float
    size_bytes: int
    opset: int


class Validation(msgspec.Struct, kw_only=True):
    """How the training recipe scored on labelled data, and under which protocol."""

    protocol: str
    files: int
    readings: int
    f1: float
    far: float
    mar: float


class TrainingData(msgspec.Struct, kw_only=True):
    """What the model was fitted on."""

    readings: int
    sources: list[str] = []
    period_s: float | None = None


class ModelCard(msgspec.Struct, kw_only=True):
    """What a person needs to judge a model: its features, threshold rule, validation figures,
    cost per reading and training data."""

    features: list[str]
    threshold_rule: str
    training: TrainingData
    latency_us_per_reading: float
    memory_mb: float
    size_bytes: int
    validation: Validation | None = None
    precision: Literal["fp32", "int8"] = "fp32"


class Manifest(msgspec.Struct, kw_only=True):
    """Everything about one model version except its weights."""

    schema: int = MANIFEST_SCHEMA
    name: str
    version: str
    created_at: float
    trained_by: str
    algorithm: str
    input: InputSpec
    output: OutputSpec
    threshold: float
    reference: ReferenceProfile
    resources: Resources
    sha256: str
    training: dict[str, float | int | str] = {}
    signature: bytes | None = None
    # The alarm rule turning exceedances of ``threshold`` into flags; the default flags exactly
    # the readings over the threshold (manifests written before the rule existed).
    alarm: AlarmSpec = msgspec.field(default_factory=AlarmSpec)
    card: ModelCard | None = None
    # What running the model needs of a node (schemas.fit); absent: not checked before deploy.
    needs: Needs | None = None
    # The change detector of the node's drift statistics (schemas.drift); the default is the
    # rule calibrated on healthy simulated pumps.
    drift: DriftSpec = msgspec.field(default_factory=DriftSpec)
    # Per channel, the range and repeat time of a working sensor; a channel without an entry is
    # checked only for dropouts, spikes beyond the reference and the default stuck time.
    sensors: dict[str, SensorSpec] = {}


def encode_manifest(manifest: Manifest) -> bytes:
    """Manifest as indented JSON (it is read by people as well as programs)."""
    return msgspec.json.format(msgspec.json.encode(manifest), indent=2) + b"\n"


def decode_manifest(data: bytes, source: str = "manifest") -> Manifest:
    """Decode a manifest, raising ValueError that names ``source`` and the bad field."""
    try:
        return msgspec.json.decode(data, type=Manifest)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise ValueError(f"{source}: invalid manifest: {exc}") from None
