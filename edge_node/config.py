"""The node's settings: a TOML file plus ``EDGE_NODE__SECTION__KEY`` environment overrides.

Only the app reads this; each component receives just the part it needs.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

import msgspec

from schemas.settings import SettingsError, load_settings
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


class SourceSection(_Section):
    kind: Literal["csv", "sim"] = "sim"
    paths: list[str] = []
    speed: Annotated[float, msgspec.Meta(ge=0)] = 1.0
    loop: bool = False
    seed: int = 0
    rate_hz: Positive = 1.0
    faults: list[str] = []
    max_block: AtLeastOne = 256


class ModelSection(_Section):
    store: str = ""  # default: <data_dir>/models
    initial: str = ""  # a model folder installed when the store has no active model
    threads: AtLeastOne = 1


class OutboxSection(_Section):
    path: str = ""  # default: <data_dir>/outbox.db
    max_bytes: AtLeastOne = 64 * 1024 * 1024
    max_handed: AtLeastOne = 1000
    # Unconfirmed by a receipt this long: hand it over again (doubling up to resend_max_s).
    resend_s: Positive = 10.0
    resend_max_s: Positive = 300.0


class BatchSection(_Section):
    max_readings: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 256
    max_age_s: Positive = 1.0


class EventsSection(_Section):
    open_after: AtLeastOne = 3
    close_after: AtLeastOne = 10
    critical_ratio: Positive = 2.0


class TelemetrySection(_Section):
    interval_s: Positive = 10.0
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


def load_config(path: Path | None, environ: Mapping[str, str]) -> NodeConfig:
    """Load and check the node's settings; :class:`SettingsError` names the bad key."""
    config = load_settings(NodeConfig, path, environ, PREFIX)
    where = str(path) if path else "settings"
    try:
        check_id(config.node.id)
    except TopicError as exc:
        raise SettingsError(f"{where}: key node.id: {exc}") from None
    source = config.source
    if source.kind == "csv" and not source.paths:
        raise SettingsError(f"{where}: key source.paths: a csv source needs at least one file")
    if config.mqtt.password and config.mqtt.password_file:
        raise SettingsError(f"{where}: key mqtt.password_file: set password or password_file")
    if config.mqtt.reconnect_max_s < config.mqtt.reconnect_min_s:
        raise SettingsError(f"{where}: key mqtt.reconnect_max_s: below reconnect_min_s")
    return config


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
