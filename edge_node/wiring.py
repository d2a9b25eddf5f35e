"""Builds a node from its config: the one place that turns settings into objects."""

from __future__ import annotations

import logging
import os
import platform
import secrets
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

from edge_node.app import EdgeNode, Timers
from edge_node.config import NodeConfig, NodeSection, SourceSection, read_password, registers
from edge_node.delivery.outbox import Outbox
from edge_node.delivery.outgoing import Sequencer
from edge_node.delivery.transport import MqttSettings, NodeTransport
from edge_node.lifecycle.control import Control, ControlSettings
from edge_node.lifecycle.ledger import Ledger
from edge_node.lifecycle.model_store import ModelStore, StoreError
from edge_node.lifecycle.probation import ProbationPolicy
from edge_node.lifecycle.sealing import ModelSeal, SealError, read_key
from edge_node.lifecycle.switcher import Switcher, open_active
from edge_node.lifecycle.trust import Marks, Trust
from edge_node.scoring.batcher import ResultBatcher
from edge_node.scoring.events import EpisodeConfig
from edge_node.scoring.pipeline import Pipeline, Scorer
from edge_node.scoring.runtime import ModelError, ModelRuntime, runtime_info
from edge_node.sources.base import Source
from edge_node.sources.csv_replay import CsvReplay
from edge_node.sources.polling import Backoff, PolledSource, Reader
from edge_node.sources.simulator import PumpSimulator, parse_fault
from edge_node.telemetry.procstats import machine_memory
from edge_node.telemetry.stats import PowerModel
from schemas.codec import encode
from schemas.messages import Capabilities, Status
from schemas.settings import SettingsError
from schemas.signing import parse_public_key
from schemas.topics import Kind, node_topic

log = logging.getLogger(__name__)


def _csv(section: SourceSection, wall_start: float) -> Source:
    return CsvReplay(
        [Path(p) for p in section.paths],
        speed=section.speed,
        loop=section.loop,
        wall_start=wall_start,
        max_block=section.max_block,
    )


def _sim(section: SourceSection, wall_start: float) -> Source:
    return PumpSimulator(
        seed=section.seed,
        rate_hz=section.rate_hz,
        speed=section.speed,
        wall_start=wall_start,
        faults=[parse_fault(f) for f in section.faults],
        max_block=section.max_block,
    )


def _polled(section: SourceSection, wall_start: float, reader: Reader) -> Source:
    log.info(
        "%s: %d channels at %.6g Hz (%s)",
        reader.name,
        len(reader.channels),
        section.rate_hz,
        ", ".join(reader.channels),
    )
    return PolledSource(
        reader,
        rate_hz=section.rate_hz,
        backoff=Backoff(section.reconnect_min_s, section.reconnect_max_s),
        wall_start=wall_start,
        max_block=section.max_block,
        buffer=section.buffer,
    )


def _modbus(section: SourceSection, wall_start: float) -> Source:
    from edge_node.sources.modbus import ModbusReader

    reader = ModbusReader(
        section.host, section.port, section.unit_id, registers(section), timeout=section.timeout_s
    )
    return _polled(section, wall_start, reader)


def _opcua(section: SourceSection, wall_start: float) -> Source:
    from edge_node.sources.opcua import OpcNode, OpcUaReader

    nodes = [OpcNode(n.channel, n.node_id, n.scale, n.offset, n.unit) for n in section.nodes]
    return _polled(section, wall_start, OpcUaReader(section.url, nodes, timeout=section.timeout_s))


# The device libraries are imported only by a node that reads such a device (asyncua alone
# takes over half a second to import).
SOURCES: dict[str, Callable[[SourceSection, float], Source]] = {
    "csv": _csv,
    "sim": _sim,
    "modbus": _modbus,
    "opcua": _opcua,
}


def active_model(
    config: NodeConfig, check: Callable[[Path], object], seal: ModelSeal | None = None
) -> ModelStore:
    """The model store, with ``model.initial`` installed and activated if it has no active
    model; ``check`` loads a model folder (raising ModelError) before it is installed, so a
    broken initial model never becomes active. With ``seal``, model files are kept encrypted."""
    store = ModelStore(config.store_dir, seal)
    leftovers = store.clean()
    if leftovers:
        log.warning("model store: removed %d leftovers of an interrupted write", leftovers)
    if store.state().active is None:
        install_initial(config, store, check)
    _seal_plain(store)
    return store


def _seal_plain(store: ModelStore) -> None:
    for ref in store.seal_plain():
        log.info("model store: encrypted %s@%s at rest", ref.name, ref.version)


def install_initial(config: NodeConfig, store: ModelStore, check: Callable[[Path], object]) -> None:
    """Check ``model.initial``, then install it and make it the active model."""
    if not config.model.initial:
        raise SettingsError(
            f"key model.initial: the model store {store.root} has no usable active model; "
            "name a model folder (model.onnx + manifest.json) to start with"
        )
    folder = Path(config.model.initial)
    try:
        check(folder)
    except ModelError as exc:
        raise ModelError(f"key model.initial: {exc}") from None
    active = store.install(folder)
    store.activate(active)
    log.info("installed initial model %s@%s", active.name, active.version)


def open_model(
    config: NodeConfig,
    load: Callable[[Path], Scorer],
    check: Callable[[Path], object] | None = None,
    seal: ModelSeal | None = None,
) -> tuple[ModelStore, Scorer, str]:
    """The store and its active model loaded (or the previous one, or ``model.initial`` when
    the active one will not load and there is nothing before it). ``load`` reads the store's
    (maybe encrypted) folders, ``check`` a plain folder such as ``model.initial`` (default:
    ``load``); ``seal`` keeps the store's files encrypted."""
    check = check or load
    store = active_model(config, check, seal)
    try:
        runtime, fallback = open_active(store, load)
    except (ModelError, StoreError) as exc:
        if not config.model.initial:
            raise
        # An active model that cannot load and has no previous: start again from the
        # configured initial model, so fixing the config is enough.
        log.error("%s; installing model.initial again", exc)
        install_initial(config, store, check)
        _seal_plain(store)
        runtime, fallback = open_active(store, load)
    return store, runtime, fallback


def model_seal(config: NodeConfig) -> ModelSeal | None:
    """The at-rest encryption of model files, if security.model_key_file names a key."""
    path = config.security.model_key_file
    if not path:
        return None
    try:
        return ModelSeal(read_key(Path(path)))
    except SealError as exc:
        raise SettingsError(str(exc)) from None


def build_node(config: NodeConfig) -> EdgeNode:
    """Everything a node needs, wired; raises SettingsError / SourceError / ModelError."""
    started = time.time()
    source = SOURCES[config.source.kind](config.source, started)
    plain = partial(ModelRuntime.load, sensors=source.channels, threads=config.model.threads)
    seal = model_seal(config)
    # The store's folders may be encrypted at rest; model.initial is a plain folder.
    load = partial(plain, opener=seal.open if seal else None)
    store, runtime, fallback = open_model(config, load, plain, seal)
    if fallback:
        log.error("%s", fallback)
    # The first readings go out at once: start-up to first published reading stays well under
    # a second whatever batch.max_age_s is.
    batcher = ResultBatcher(config.batch.max_readings, config.batch.max_age_s, first_at_once=True)
    events = EpisodeConfig(
        config.events.open_after, config.events.close_after, config.events.critical_ratio
    )
    pipeline = Pipeline(runtime, source.channels, batcher, events)
    seq = Sequencer(config.node.id, secrets.token_hex(4))
    will = encode(Status(**seq.peek(started), state="offline", started_at=started))
    transport = _transport(config, will)
    capabilities = _capabilities(source, config.node)
    switcher = _switcher(config, store, pipeline, load)
    control = _control(config, seq, switcher, transport, capabilities)
    if fallback:
        control.errors["model_fallback"] += 1
    transport.subscribe(control.cmd_topic)
    transport.subscribe(node_topic(config.node.id, Kind.RECEIPT))
    outbox = Outbox(config.outbox_path, config.outbox.max_bytes)
    active = runtime.ref
    log.info(
        "node %s boot %s: model %s@%s, outbox %s (%d queued)",
        config.node.id,
        seq.boot,
        active.name,
        active.version,
        outbox.path,
        outbox.depth,
    )
    return EdgeNode(
        seq=seq,
        source=source,
        pipeline=pipeline,
        control=control,
        outbox=outbox,
        transport=transport,
        timers=Timers(
            config.telemetry.interval_s,
            config.telemetry.drift_interval_s,
            config.outbox.max_handed,
            config.mqtt.max_packet_bytes,
            resend_s=config.outbox.resend_s,
            resend_max_s=max(config.outbox.resend_s, config.outbox.resend_max_s),
        ),
        power=PowerModel(config.power.idle_w, config.power.per_core_w),
        capabilities=capabilities,
        started_at=started,
    )


def _switcher(
    config: NodeConfig, store: ModelStore, pipeline: Pipeline, load: Callable[[Path], Scorer]
) -> Switcher:
    cmds = config.commands
    return Switcher(
        store=store,
        pipeline=pipeline,
        load=load,
        # One worker: model operations run one at a time, off the scoring thread.
        executor=ThreadPoolExecutor(max_workers=1, thread_name_prefix="model-loader"),
        probation=ProbationPolicy(runs=cmds.probation_runs, latency_factor=cmds.latency_factor),
    )


def _control(
    config: NodeConfig,
    seq: Sequencer,
    switcher: Switcher,
    transport: NodeTransport,
    capabilities: Capabilities,
) -> Control:
    cmds = config.commands
    return Control(
        ControlSettings(
            node=config.node.id,
            channels=switcher.pipeline.source_channels,
            capabilities=capabilities,
            chunk_timeout_s=cmds.chunk_timeout_s,
            chunk_retries=cmds.chunk_retries,
            capture_buffer=cmds.capture_buffer,
            shadow_report_s=config.telemetry.drift_interval_s,
        ),
        seq=seq,
        switcher=switcher,
        subscriber=transport,
        ledger=Ledger(config.commands_path),
        started=time.monotonic(),
        trust=_trust(config),
    )


def _trust(config: NodeConfig) -> Trust | None:
    """The hub keys this node believes; None (unsigned commands applied) if there are none."""
    hub_keys = config.security.hub_keys
    if not hub_keys:
        log.warning("security.hub_keys is empty: commands are applied without a signature check")
        return None
    keys = [parse_public_key(k, f"security.hub_keys[{i}]") for i, k in enumerate(hub_keys)]
    log.info("commands must be signed by hub key %s", " or ".join(k.key_id for k in keys))
    return Trust(keys, Marks(config.data_dir / "trust.json"))


def _transport(config: NodeConfig, will: bytes) -> NodeTransport:
    mqtt = config.mqtt
    return NodeTransport(
        MqttSettings(
            host=mqtt.host,
            port=mqtt.port,
            client_id=config.node.id,
            username=mqtt.username or config.node.id,
            password=read_password(config),
            keepalive_s=mqtt.keepalive_s,
            tls_ca=mqtt.tls_ca,
            tls_cert=mqtt.tls_cert,
            tls_key=mqtt.tls_key,
            max_inflight=mqtt.max_inflight,
            reconnect_min_s=mqtt.reconnect_min_s,
            reconnect_max_s=mqtt.reconnect_max_s,
            session_expiry_s=mqtt.session_expiry_s,
        ),
        will_topic=node_topic(config.node.id, Kind.STATUS),
        will_payload=will,
        subscriptions=[],
    )


def _capabilities(source: Source, node: NodeSection) -> Capabilities:
    ort_version, opset = runtime_info()
    total, available = machine_memory()
    return Capabilities(
        channels=source.channels,
        sample_hz=1.0 / source.period,
        memory_mb=total / 1e6,
        memory_available_mb=available / 1e6,
        cpu_count=os.cpu_count() or 1,
        onnx_opset=opset,
        ort_version=ort_version,
        platform=f"{platform.system()}-{platform.machine()}",
        power_budget_w=node.power_budget_w,
        must_run_offline=node.must_run_offline,
        price=node.price,
        group=node.group,
    )
