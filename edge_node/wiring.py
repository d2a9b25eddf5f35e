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

import psutil

from edge_node.app import EdgeNode, Timers
from edge_node.config import NodeConfig, SourceSection, read_password, registers
from edge_node.delivery.outbox import Outbox
from edge_node.delivery.outgoing import Sequencer
from edge_node.delivery.transport import MqttSettings, NodeTransport
from edge_node.lifecycle.control import Control, ControlSettings
from edge_node.lifecycle.ledger import Ledger
from edge_node.lifecycle.model_store import ModelStore
from edge_node.lifecycle.probation import ProbationPolicy
from edge_node.lifecycle.sealing import ModelSeal, SealError, read_key
from edge_node.lifecycle.switcher import Switcher, open_active
from edge_node.lifecycle.trust import Marks, Trust
from edge_node.scoring.batcher import ResultBatcher
from edge_node.scoring.events import EpisodeConfig
from edge_node.scoring.pipeline import Pipeline, Scorer
from edge_node.scoring.runtime import ModelRuntime, runtime_info
from edge_node.sources.base import Source
from edge_node.sources.csv_replay import CsvReplay
from edge_node.sources.polling import Backoff, PolledSource, Reader
from edge_node.sources.simulator import PumpSimulator, parse_fault
from edge_node.telemetry.stats import PowerModel
from schemas.codec import encode
from schemas.messages import Capabilities, ModelRef, Status
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


def active_model(config: NodeConfig) -> tuple[ModelStore, ModelRef]:
    """The store and its active model, installing ``model.initial`` into a new store."""
    store = ModelStore(config.store_dir, model_seal(config))
    leftovers = store.clean()
    if leftovers:
        log.warning("model store: removed %d leftovers of an interrupted write", leftovers)
    active = store.state().active
    if active is None:
        if not config.model.initial:
            raise SettingsError(
                f"key model.initial: the model store {store.root} has no active model; "
                "name a model folder (model.onnx + manifest.json) to start with"
            )
        active = store.install(Path(config.model.initial))
        store.activate(active)
        log.info("installed initial model %s@%s", active.name, active.version)
    for ref in store.seal_plain():
        log.info("model store: encrypted %s@%s at rest", ref.name, ref.version)
    return store, active


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
    store, _ = active_model(config)
    load = partial(
        ModelRuntime.load,
        sensors=source.channels,
        threads=config.model.threads,
        opener=store.seal.open if store.seal else None,
    )
    runtime, fallback = open_active(store, load)
    if fallback:
        log.error("%s", fallback)
    batcher = ResultBatcher(config.batch.max_readings, config.batch.max_age_s)
    events = EpisodeConfig(
        config.events.open_after, config.events.close_after, config.events.critical_ratio
    )
    pipeline = Pipeline(runtime, source.channels, batcher, events)
    seq = Sequencer(config.node.id, secrets.token_hex(4))
    will = encode(Status(**seq.peek(started), state="offline", started_at=started))
    transport = _transport(config, will)
    control = _control(config, seq, _switcher(config, store, pipeline, load), transport)
    if fallback:
        control.errors["model_fallback"] += 1
    transport.subscribe(control.cmd_topic)
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
        ),
        power=PowerModel(config.power.idle_w, config.power.per_core_w),
        capabilities=_capabilities(source),
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
    config: NodeConfig, seq: Sequencer, switcher: Switcher, transport: NodeTransport
) -> Control:
    cmds = config.commands
    return Control(
        ControlSettings(
            node=config.node.id,
            channels=switcher.pipeline.source_channels,
            chunk_timeout_s=cmds.chunk_timeout_s,
            chunk_retries=cmds.chunk_retries,
            capture_buffer=cmds.capture_buffer,
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


def _capabilities(source: Source) -> Capabilities:
    ort_version, opset = runtime_info()
    return Capabilities(
        channels=source.channels,
        sample_hz=1.0 / source.period,
        memory_mb=psutil.virtual_memory().total / 1e6,
        cpu_count=os.cpu_count() or 1,
        onnx_opset=opset,
        ort_version=ort_version,
        platform=f"{platform.system()}-{platform.machine()}",
    )
