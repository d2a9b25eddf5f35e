"""The node's settings: a TOML file plus ``EDGE_NODE__SECTION__KEY`` environment overrides.

Only the app reads this; each component receives just the part it needs.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from edge_node.sources.registers import Register, check_map
from schemas.readings_csv import normalise_channel
from schemas.settings import SettingsError, load_settings
from schemas.signing import parse_public_key
from schemas.topics import TopicError, check_id

PREFIX = "EDGE_NODE"

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
Positive = Annotated[float, msgspec.Meta(gt=0)]
AtLeastOne = Annotated[int, msgspec.Meta(ge=1)]


class _Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    pass


class NodeSection(_Section):
    id: str
    data_dir: str = ""  # default: var/edge/<id>
    # Announced in the birth for the fit check before a deploy (schemas.fit): the device's
    # power budget for models (W), its price (the hub can pick the cheapest device that fits),
    # and whether it must run without the hub.
    power_budget_w: Annotated[float, msgspec.Meta(gt=0)] | None = None
    price: Annotated[float, msgspec.Meta(ge=0)] | None = None
    must_run_offline: bool = False
    # The node's group or site: the hub's metrics aggregate by it (a bounded number of them).
    group: Annotated[str, msgspec.Meta(max_length=64)] = ""


class MqttSection(_Section):
    host: str = "127.0.0.1"
    port: Port = 1883
    username: str = ""  # default: the node id
    password: str = ""
    password_file: str = ""
    keepalive_s: AtLeastOne = 30
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    max_inflight: AtLeastOne = 100
    # The broker's max_packet_size (mosquitto/mosquitto.conf); larger messages are refused here,
    # because the broker would drop the connection and paho would resend them forever.
    max_packet_bytes: Annotated[int, msgspec.Meta(ge=1024)] = 262144
    reconnect_min_s: AtLeastOne = 1
    reconnect_max_s: AtLeastOne = 60
    # The broker keeps the node's subscriptions and queues its commands this long while it is
    # away (persistent session), so commands sent during an outage still arrive.
    session_expiry_s: Annotated[int, msgspec.Meta(ge=0)] = 3600


SOURCE_KINDS = ("csv", "sim", "modbus", "opcua")


class RegisterEntry(_Section):
    """``[[source.registers]]``: one Modbus value read as one channel."""

    channel: str
    address: Annotated[int, msgspec.Meta(ge=0, le=65535)]  # 0-based, as on the wire
    table: Literal["holding", "input"] = "holding"
    type: Literal["int16", "uint16", "int32", "uint32", "float32"] = "uint16"
    word_order: Literal["big", "little"] = "big"  # of a 32-bit value: "big" = high word first
    scale: float = 1.0  # channel value = raw * scale + offset
    offset: float = 0.0
    unit: str = ""


class NodeEntry(_Section):
    """``[[source.nodes]]``: one OPC UA variable read as one channel."""

    channel: str
    node_id: str  # e.g. "ns=2;s=Pump1.Pressure"
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""


class SourceSection(_Section):
    kind: str = "sim"  # one of SOURCE_KINDS
    paths: list[str] = []
    speed: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    loop: bool = False
    seed: int = 0
    rate_hz: Positive = 1.0  # sim: readings per second; modbus, opcua: polls per second
    faults: list[str] = []
    max_block: AtLeastOne = 256
    # modbus and opcua: the device, its map, and how to treat it when it does not answer.
    host: str = "127.0.0.1"
    port: Port = 502
    unit_id: Annotated[int, msgspec.Meta(ge=0, le=255)] = 1
    url: str = ""
    registers: list[RegisterEntry] = []
    nodes: list[NodeEntry] = []
    timeout_s: Positive = 1.0
    reconnect_min_s: Positive = 0.5
    reconnect_max_s: Positive = 30.0
    buffer: AtLeastOne = 4096  # readings waiting for the loop; the oldest go when full


class ModelSection(_Section):
    store: str = ""  # default: <data_dir>/models
    initial: str = ""  # a model folder installed when the store has no active model
    threads: AtLeastOne = 1


class OutboxSection(_Section):
    path: str = ""  # default: <data_dir>/outbox.db
    max_bytes: AtLeastOne = 64 * 1024 * 1024
    max_handed: AtLeastOne = 1000
    # Unconfirmed by a receipt this long: hand it over again (doubling up to resend_max_s).
    resend_s: Positive = 30.0
    resend_max_s: Positive = 300.0


class BatchSection(_Section):
    # A result batch goes when it holds max_readings or is max_age_s old (anomaly events go at
    # once, not with the batch): 5 s is a third of Prometheus' usual scrape interval, and keeps
    # a 10,000-node fleet's result traffic to 2,000 messages a second.
    max_readings: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 256
    max_age_s: Positive = 5.0


class EventsSection(_Section):
    # Flags already follow the model's alarm rule (its manifest), so by default an episode is
    # one alarm; larger values only delay or merge episode reports, never the flags.
    open_after: AtLeastOne = 1
    close_after: AtLeastOne = 1
    critical_ratio: Positive = 2.0


class TelemetrySection(_Section):
    interval_s: Positive = 60.0
    drift_interval_s: Positive = 60.0


class PowerSection(_Section):
    idle_w: Annotated[float, msgspec.Meta(ge=0)] = 2.7
    per_core_w: Annotated[float, msgspec.Meta(ge=0)] = 0.925


class CommandsSection(_Section):
    chunk_timeout_s: Positive = 5.0  # ask the hub again for missing chunks after this quiet
    chunk_retries: Annotated[int, msgspec.Meta(ge=0)] = 5  # ... at most this many times
    capture_buffer: AtLeastOne = 20_000  # readings kept for retrain, and the most one may ask
    probation_runs: AtLeastOne = 20  # model runs a new model is watched before it is trusted
    latency_factor: Positive = 20.0  # roll back when this many times slower than its manifest


class SecuritySection(_Section):
    """``hub_keys``: base64 Ed25519 public keys of the hub (``cloud-hub keygen`` prints one).

    With any key set, the node applies only commands and manifests signed by one of them (two
    during a key rotation); with none, it applies unsigned commands, as before signing.
    """

    hub_keys: list[str] = []
    # A file of such keys, one per line ('#' comments): added to hub_keys when the config loads
    # (a container mounts `hub.key.pub` where an environment variable cannot hold the key).
    hub_keys_file: str = ""
    # A file with a base64 AES-256 key: model files are kept encrypted in the model store.
    model_key_file: str = ""


class NodeConfig(_Section):
    node: NodeSection
    mqtt: MqttSection = msgspec.field(default_factory=MqttSection)
    source: SourceSection = msgspec.field(default_factory=SourceSection)
    model: ModelSection = msgspec.field(default_factory=ModelSection)
    outbox: OutboxSection = msgspec.field(default_factory=OutboxSection)
    batch: BatchSection = msgspec.field(default_factory=BatchSection)
    events: EventsSection = msgspec.field(default_factory=EventsSection)
    telemetry: TelemetrySection = msgspec.field(default_factory=TelemetrySection)
    power: PowerSection = msgspec.field(default_factory=PowerSection)
    commands: CommandsSection = msgspec.field(default_factory=CommandsSection)
    security: SecuritySection = msgspec.field(default_factory=SecuritySection)

    @property
    def data_dir(self) -> Path:
        return Path(self.node.data_dir or f"var/edge/{self.node.id}")

    @property
    def store_dir(self) -> Path:
        return Path(self.model.store) if self.model.store else self.data_dir / "models"

    @property
    def outbox_path(self) -> Path:
        return Path(self.outbox.path) if self.outbox.path else self.data_dir / "outbox.db"

    @property
    def commands_path(self) -> Path:
        """The book of recent command ids and their last acks."""
        return self.data_dir / "commands.json"


# --- where the settings come from (edge-node run: --config, then $EDGE_NODE_CONFIG, then this) ---
CONFIG_ENV = "EDGE_NODE_CONFIG"
SYSTEM_CONFIG = Path("/etc/edgeml/node.toml")
# Keys holding file paths: relative ones written in a file are relative to the file's folder.
PATH_KEYS = (
    "node.data_dir",
    "mqtt.password_file",
    "mqtt.tls_ca",
    "mqtt.tls_cert",
    "mqtt.tls_key",
    "source.paths",
    "model.store",
    "model.initial",
    "outbox.path",
    "security.model_key_file",
    "security.hub_keys_file",
)


def load_config(path: Path | None, environ: Mapping[str, str]) -> NodeConfig:
    """Load and check the node's settings; :class:`SettingsError` names the bad key."""
    config = load_settings(NodeConfig, path, environ, PREFIX, PATH_KEYS)
    where = str(path) if path else "settings"
    try:
        check_id(config.node.id)
    except TopicError as exc:
        raise SettingsError(f"{where}: key node.id: {exc}") from None
    _check_source(config.source, where)
    if config.mqtt.password and config.mqtt.password_file:
        raise SettingsError(f"{where}: key mqtt.password_file: set password or password_file")
    if config.mqtt.reconnect_max_s < config.mqtt.reconnect_min_s:
        raise SettingsError(f"{where}: key mqtt.reconnect_max_s: below reconnect_min_s")
    if config.security.hub_keys_file:
        config.security.hub_keys += _keys_in(Path(config.security.hub_keys_file), where)
    for i, key in enumerate(config.security.hub_keys):
        try:
            parse_public_key(key, f"{where}: key security.hub_keys[{i}]")
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
    return config


def _keys_in(path: Path, where: str) -> list[str]:
    """The keys listed in a ``hub_keys_file``, each checked, errors naming file and line."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise SettingsError(
            f"{where}: key security.hub_keys_file: cannot read {path}: {exc}"
        ) from None
    keys: list[str] = []
    for number, line in enumerate(lines, 1):
        key = line.split("#", 1)[0].strip()
        if not key:
            continue
        try:
            parse_public_key(key, f"{where}: key security.hub_keys_file {path} line {number}")
        except ValueError as exc:
            raise SettingsError(str(exc)) from None
        keys.append(key)
    if not keys:
        raise SettingsError(f"{where}: key security.hub_keys_file: {path} lists no key")
    return keys


def _check_source(source: SourceSection, where: str) -> None:
    """Settings msgspec cannot check alone: the kind, what it needs, the channel maps."""
    needs = {
        "csv": ("paths", bool(source.paths), "a csv source needs at least one file"),
        "modbus": ("registers", bool(source.registers), "a modbus source maps no register"),
        "opcua": ("nodes", bool(source.nodes), "an opcua source maps no node"),
    }
    if source.kind not in SOURCE_KINDS:
        raise SettingsError(
            f"{where}: key source.kind: {source.kind!r} is not one of {', '.join(SOURCE_KINDS)}"
        )
    key, present, problem = needs.get(source.kind, ("", True, ""))
    if not present:
        raise SettingsError(f"{where}: key source.{key}: {problem}")
    if source.kind == "opcua" and not source.url.startswith("opc.tcp://"):
        raise SettingsError(
            f"{where}: key source.url: an opcua source needs an opc.tcp:// endpoint, "
            f"got {source.url!r}"
        )
    if source.reconnect_max_s < source.reconnect_min_s:
        raise SettingsError(f"{where}: key source.reconnect_max_s: below reconnect_min_s")
    if source.kind == "modbus":
        _check_channels([r.channel for r in source.registers], "source.registers", where)
        for i, field, problem in check_map(registers(source)):
            raise SettingsError(f"{where}: key source.registers[{i}].{field}: {problem}")
    if source.kind == "opcua":
        _check_channels([n.channel for n in source.nodes], "source.nodes", where)
        for i, node in enumerate(source.nodes):
            if not (math.isfinite(node.scale) and node.scale != 0):
                raise SettingsError(
                    f"{where}: key source.nodes[{i}].scale: must be a finite non-zero number, "
                    f"got {node.scale!r}"
                )
            if not math.isfinite(node.offset):
                raise SettingsError(
                    f"{where}: key source.nodes[{i}].offset: must be finite, got {node.offset!r}"
                )


def _check_channels(channels: list[str], key: str, where: str) -> None:
    """Channel names as the model names them (normalised, like CSV headers), each once."""
    seen: dict[str, int] = {}
    for i, channel in enumerate(channels):
        if not channel or channel != normalise_channel(channel):
            raise SettingsError(
                f"{where}: key {key}[{i}].channel: {channel!r} is not a channel name; use "
                f"lowercase letters, digits and '_' (e.g. {normalise_channel(channel) or 'flow'!r})"
            )
        if channel in seen:
            raise SettingsError(
                f"{where}: key {key}[{i}].channel: {channel!r} is already mapped by "
                f"{key}[{seen[channel]}]"
            )
        seen[channel] = i


def registers(source: SourceSection) -> list[Register]:
    """The ``[[source.registers]]`` map as the Modbus reader takes it."""
    return [
        Register(
            channel=r.channel,
            address=r.address,
            table=r.table,
            dtype=r.type,
            word_order=r.word_order,
            scale=r.scale,
            offset=r.offset,
            unit=r.unit,
        )
        for r in source.registers
    ]


def read_password(config: NodeConfig) -> str:
    """The broker password, from the file when one is named."""
    if not config.mqtt.password_file:
        return config.mqtt.password
    try:
        return Path(config.mqtt.password_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SettingsError(
            f"key mqtt.password_file: cannot read {config.mqtt.password_file}: {exc.strerror}"
        ) from None
