"""cloud-hub settings: a TOML file plus ``CLOUD_HUB__SECTION__KEY`` environment overrides.

Value ranges are part of the types, so a bad value fails at start-up with a
:class:`~schemas.settings.SettingsError` naming the key and the file (or variable).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Final, Literal

import msgspec

from schemas.settings import SettingsError, load_settings

ENV_PREFIX: Final = "CLOUD_HUB"
# Where the settings come from: --config, then $CLOUD_HUB_CONFIG, then this file if it exists.
CONFIG_ENV: Final = "CLOUD_HUB_CONFIG"
SYSTEM_CONFIG: Final = Path("/etc/edgeml/hub.toml")
# Keys holding file paths: relative ones written in a file are relative to the file's folder.
PATH_KEYS: Final = (
    "mqtt.password_file",
    "mqtt.tls_ca",
    "mqtt.tls_cert",
    "mqtt.tls_key",
    "store.db",
    "store.ledger_db",
    "store.models_dir",
    "store.captures_dir",
    "store.events_db",
    "store.rollouts_db",
    "security.signing_key",
)

Port = Annotated[int, msgspec.Meta(ge=1, le=65535)]
# 0 asks the OS for a free port (tests, several hubs on one host); the hub logs the one it got.
ListenPort = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Seconds = Annotated[int, msgspec.Meta(ge=1)]
NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]


class MqttConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Broker connection; ``password_file`` (read at start, stripped) wins over ``password``."""

    host: NonEmpty = "127.0.0.1"
    port: Port = 1883
    username: str = "hub"
    password: str = ""
    password_file: str = ""
    client_id: NonEmpty = "cloud-hub"
    keepalive_s: Annotated[int, msgspec.Meta(ge=5, le=65535)] = 30
    # Up to 2**32 - 1 (never expires); 0 would drop what queued while the hub was away.
    session_expiry_s: Annotated[int, msgspec.Meta(ge=1, le=2**32 - 1)] = 86400
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    # Hubs with the same group share the node stream ($share/<group>/...); empty: this hub
    # gets every message. A group needs a shared store (store.url).
    share_group: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{0,64}$")] = ""


class StoreConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Where the hub keeps its files; empty paths default to the folder of ``db``.

    ``db`` is the fleet registry, ``ledger_db`` the command ledger (``<db folder>/ledger.db``),
    ``models_dir`` the model catalog (``<db folder>/models``, holding ``catalog.db``) and
    ``captures_dir`` the readings nodes captured for retraining (``<db folder>/captures``),
    ``events_db`` the nodes' anomaly and sensor-fault episodes (``<db folder>/events.db``),
    ``rollouts_db`` the rollouts (``<db folder>/rollouts.db``).
    ``url`` moves the ingest state (registry, snapshots, dedupe streams) to PostgreSQL;
    the ledger, catalog, captures, episodes and rollouts stay in these files.
    """

    db: NonEmpty = "var/hub/hub.db"
    # postgresql://user@host:port/db: the ingest state shared by several hubs (empty: db).
    url: str = ""
    # How often a hub on a shared store reads the whole fleet back for /metrics (seconds).
    refresh_s: Annotated[float, msgspec.Meta(gt=0)] = 5.0
    ledger_db: str = ""
    models_dir: str = ""
    captures_dir: str = ""
    events_db: str = ""
    rollouts_db: str = ""

    def ledger_path(self) -> Path:
        """The command ledger's SQLite file."""
        return Path(self.ledger_db) if self.ledger_db else Path(self.db).parent / "ledger.db"

    def models_path(self) -> Path:
        """The model catalog's folder."""
        return Path(self.models_dir) if self.models_dir else Path(self.db).parent / "models"

    def events_path(self) -> Path:
        """The episode store (cloud_hub.ingest.events_store), ``<db folder>/events.db``."""
        return Path(self.events_db) if self.events_db else Path(self.db).parent / "events.db"

    def rollouts_path(self) -> Path:
        """The rollout store (cloud_hub.rollouts.store), ``<db folder>/rollouts.db``."""
        return Path(self.rollouts_db) if self.rollouts_db else Path(self.db).parent / "rollouts.db"

    def captures_path(self) -> Path:
        """The folder of captured readings, one subfolder per retrain command."""
        return Path(self.captures_dir) if self.captures_dir else Path(self.db).parent / "captures"


class MetricsConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Prometheus endpoint. Every node has its health gauges (up, last seen, active model);
    ``per_node`` adds the full per-node detail for at most ``per_node_limit`` nodes (by id);
    group series carry at most ``max_groups`` group names (later groups are ``other``)."""

    host: NonEmpty = "127.0.0.1"
    port: ListenPort = 9100
    per_node: bool = True
    per_node_limit: Annotated[int, msgspec.Meta(ge=0, le=100_000)] = 100
    max_groups: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 50


class IngestConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``offline_after_s``: silence after which a node counts as offline without its will;
    ``max_clock_ahead_s``: how far ahead of the hub's clock a status, telemetry or drift
    ``ts`` may be; ``receipt_interval_s``: at most one receipt per node and boot this often;
    ``commit_batch``: at most this many messages applied per commit of the hub's state."""

    offline_after_s: Annotated[float, msgspec.Meta(gt=0)] = 120.0
    max_clock_ahead_s: Annotated[float, msgspec.Meta(gt=0)] = 600.0
    receipt_interval_s: Annotated[float, msgspec.Meta(ge=0)] = 5.0
    commit_batch: Annotated[int, msgspec.Meta(ge=1, le=900)] = 500


class SecurityConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """``signing_key``: the hub's Ed25519 key (``cloud-hub keygen``); when set, every command
    and every deployed manifest is signed with it. Empty: commands go out unsigned, and nodes
    that trust a hub key refuse them."""

    signing_key: str = ""


Fraction = Annotated[float, msgspec.Meta(ge=0, le=1)]


class RetrainLoopConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """The drift -> retrain loop of ``serve`` (cloud_hub.retraining; off by default).

    A node whose drift state stays ``drifting`` for ``hold_s`` is asked to capture ``readings``
    (``mode`` next / last); a candidate is trained on the first ``1 - held_back`` of them plus
    the current model's healthy reference and kept only if its false-alarm rate is at most
    ``max_far_held_back`` on the held-back readings and at most ``max_far_increase`` above the
    current model's on the reference. ``approval`` manual waits for ``cloud-hub approve``;
    ``bake_s`` after the switch the flag rate may exceed the one before by ``bake_tolerance``
    at most, else the node is rolled back. ``cooldown_s`` separates two runs on one node.
    """

    enabled: bool = False
    hold_s: Annotated[float, msgspec.Meta(ge=0)] = 900.0
    readings: Annotated[int, msgspec.Meta(ge=100)] = 6000
    mode: Literal["next", "last"] = "next"
    approval: Literal["manual", "auto"] = "manual"
    cooldown_s: Annotated[float, msgspec.Meta(ge=0)] = 86400.0
    held_back: Annotated[float, msgspec.Meta(gt=0, lt=1)] = 0.3
    max_far_held_back: Fraction = 0.02
    max_far_increase: Fraction = 0.005
    bake_s: Annotated[float, msgspec.Meta(gt=0)] = 600.0
    bake_tolerance: Fraction = 0.01
    command_timeout_s: Annotated[float, msgspec.Meta(gt=0)] = 120.0


Positive = Annotated[float, msgspec.Meta(gt=0)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]


class RolloutConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """Rollouts driven by ``serve`` and their gate (cloud_hub.rollouts.gate states each check).

    ``bake_s``: a wave's default bake time (``rollout start --bake`` overrides);
    ``deploy_timeout_s``: how long a wave waits for a node to answer its deploy (the deploy
    expires then, so a node back later does not switch behind the rollout's back);
    ``tick_s``: how often ``serve`` moves rollouts on. The rest are the gate's limits.
    """

    bake_s: Positive = 600.0
    deploy_timeout_s: Positive = 300.0
    tick_s: Positive = 0.5
    flag_rate_ratio: Positive = 2.0
    flag_rate_rise: NonNegative = 0.01
    score_distance: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.25
    episodes_rise: NonNegative = 1.0
    latency_ratio: Positive = 2.0
    latency_rise_ms: NonNegative = 5.0
    unscored_rise: NonNegative = 0.01
    errors: Annotated[int, msgspec.Meta(ge=0)] = 0
    probation_rollbacks: Annotated[int, msgspec.Meta(ge=0)] = 0
    min_readings: Annotated[int, msgspec.Meta(ge=1)] = 50


class HubConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    """All cloud-hub settings."""

    mqtt: MqttConfig = msgspec.field(default_factory=MqttConfig)
    store: StoreConfig = msgspec.field(default_factory=StoreConfig)
    metrics: MetricsConfig = msgspec.field(default_factory=MetricsConfig)
    ingest: IngestConfig = msgspec.field(default_factory=IngestConfig)
    security: SecurityConfig = msgspec.field(default_factory=SecurityConfig)
    retrain_loop: RetrainLoopConfig = msgspec.field(default_factory=RetrainLoopConfig)
    rollout: RolloutConfig = msgspec.field(default_factory=RolloutConfig)


def load_hub_config(path: Path | None, environ: Mapping[str, str]) -> HubConfig:
    """Read ``path`` (optional) with overrides from ``environ``; SettingsError names the key."""
    config = load_settings(HubConfig, path, environ, ENV_PREFIX, PATH_KEYS)
    source = str(path) if path else "defaults"
    _check_tls(config.mqtt, source)
    _check_sharing(config, source)
    return config


def resolve_password(mqtt: MqttConfig) -> str:
    """The broker password: the stripped contents of ``password_file`` if set, else ``password``."""
    if not mqtt.password_file:
        return mqtt.password
    try:
        return Path(mqtt.password_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SettingsError(
            f"key mqtt.password_file: cannot read {mqtt.password_file}: {exc.strerror}"
        ) from None


def _check_tls(mqtt: MqttConfig, source: str) -> None:
    """A client certificate needs its key and vice versa."""
    if bool(mqtt.tls_cert) != bool(mqtt.tls_key):
        missing = "mqtt.tls_key" if mqtt.tls_cert else "mqtt.tls_cert"
        raise SettingsError(f"{source}: key {missing}: tls_cert and tls_key go together")


def _check_sharing(config: HubConfig, source: str) -> None:
    """Hubs sharing the stream must share their store, or each would count a part."""
    url = config.store.url
    if url and not url.startswith(("postgresql://", "postgres://")):
        raise SettingsError(f"{source}: key store.url: {url!r} is not a postgresql:// URL")
    if config.mqtt.share_group and not url:
        raise SettingsError(
            f"{source}: key mqtt.share_group: hubs sharing the stream need a shared store: "
            "set store.url = postgresql://..."
        )
