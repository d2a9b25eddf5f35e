"""The lifecycle CLI: argument errors, catalog and ledger tables, and the command sessions
driven through an in-memory broker that answers like a node (no sockets, no sleeps)."""

from __future__ import annotations

import argparse
import hashlib
import io
import json
from collections import deque
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest

from cloud_hub.cli import session as session_module
from cloud_hub.cli.commands import deploy, retrain
from cloud_hub.cli.main import build_parser, main
from cloud_hub.cli.session import ProgressLine, Session
from cloud_hub.commands.ledger import Ledger
from cloud_hub.config import HubConfig, StoreConfig
from cloud_hub.ingest.transport import Received
from cloud_hub.models.catalog import Catalog, CatalogEntry
from schemas.codec import decode, encode
from schemas.commands import format_ranges
from schemas.manifest import encode_manifest
from schemas.messages import (
    Ack,
    AckStatus,
    Capabilities,
    Capture,
    Deploy,
    ModelRef,
    Retrain,
    Status,
)
from schemas.packing import pack_f32
from schemas.samples import MANIFEST

T0 = 1_800_000_000.0
Respond = Callable[[Any], list[Received]]


def model_folder(root: Path, version: str, data: bytes) -> Path:
    """A model folder as ``cloud-hub train`` writes it (the bytes need not be real ONNX)."""
    root.mkdir(parents=True)
    sha = hashlib.sha256(data).hexdigest()
    manifest = msgspec.structs.replace(MANIFEST, name="pump-pca", version=version, sha256=sha)
    (root / "model.onnx").write_bytes(data)
    (root / "manifest.json").write_bytes(encode_manifest(manifest))
    return root


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Settings from the environment only, as the integration tests run the CLI."""
    # Not this machine's settings file, if it has one.
    monkeypatch.delenv("CLOUD_HUB_CONFIG", raising=False)
    monkeypatch.setattr(session_module, "SYSTEM_CONFIG", tmp_path / "no-hub.toml")
    db = tmp_path / "hub" / "hub.db"
    monkeypatch.setenv("CLOUD_HUB__STORE__DB", str(db))
    return db.parent


@pytest.mark.parametrize(
    "argv",
    [
        ["deploy", "--model", "m", "--version", "1"],
        ["deploy", "--model", "m", "--version", "1", "--node", "bad/node"],
        ["deploy", "--model", "m", "--version", "1", "--node", "n", "--timeout", "0"],
        ["deploy", "--model", "m", "--version", "1", "--node", "n", "--chunk-size", "0"],
        ["rollback"],
        ["ping", "--node", "n", "--expires-in", "-1"],
        ["retrain", "--node", "n"],
        ["retrain", "--node", "n", "--readings", "10", "--mode", "sometimes"],
        ["commands", "--limit", "0"],
        ["register"],
    ],
)
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    assert "usage: cloud-hub" in capsys.readouterr().err


def test_deploy_of_a_model_not_in_the_catalog_exits_2_naming_it(
    env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["deploy", "--model", "ghost", "--version", "7", "--node", "pump-1"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "ghost@7 is not in the catalog" in err and "cloud-hub register" in err


def test_a_bad_setting_exits_2(env: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLOUD_HUB__MQTT__PORT", "not-a-port")
    assert main(["ping", "--node", "pump-1"]) == 2


def test_train_needs_a_version_or_register(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["train", "--csv", "x.csv", "--name", "m", "--out", "o"]
    assert main(argv) == 2
    assert "--version" in capsys.readouterr().err


def test_register_then_models_lists_it(
    env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = model_folder(tmp_path / "src", "2", b"model bytes")
    assert main(["register", str(folder)]) == 0
    assert main(["register", str(folder)]) == 0, "registering again is fine"
    assert capsys.readouterr().out == "pump-pca@2\npump-pca@2\n"
    assert (env / "models" / "pump-pca" / "2" / "model.onnx").read_bytes() == b"model bytes"
    assert main(["models"]) == 0
    header, row = capsys.readouterr().out.splitlines()
    assert header.split()[:4] == ["MODEL", "VERSION", "ALGORITHM", "SIZE"]
    assert row.split()[:4] == ["pump-pca", "2", MANIFEST.algorithm, "11"]


def test_register_refusals_exit_1_or_2(
    env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["register", str(model_folder(tmp_path / "a", "2", b"one"))]) == 0
    assert main(["register", str(model_folder(tmp_path / "b", "2", b"two"))]) == 1
    assert "already registered" in capsys.readouterr().err
    assert main(["register", str(tmp_path / "absent")]) == 2
    assert "is not a folder" in capsys.readouterr().err


def test_empty_tables_say_so(env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["models"]) == 0
    assert main(["commands"]) == 0
    out = capsys.readouterr().out
    assert "(no models" in out and "(no commands yet)" in out


class Broker:
    """The CommandPort of a session, answering each command with ``respond``."""

    client_id = "cloud-hub-cli-test"

    def __init__(self, respond: Respond) -> None:
        self.respond = respond
        self.subscribed: list[tuple[str, int]] = []
        self.published: list[tuple[str, bytes]] = []
        self.inbox: deque[Received] = deque()

    def connect(self, timeout: float) -> None:
        pass

    def subscribe(self, topics: list[tuple[str, int]], timeout: float) -> None:
        self.subscribed += topics

    def publish(self, topic: str, payload: bytes, timeout: float) -> None:
        self.published.append((topic, payload))
        self.inbox.extend(self.respond(decode("cmd", payload, topic)))

    def receive(self, timeout: float) -> Received | None:
        return self.inbox.popleft() if self.inbox else None

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        self.now += 0.01
        return self.now


def answer(command: Any, status: AckStatus, seq: int, **fields: Any) -> Received:
    message = Ack(
        node=command.node,
        boot="node-boot",
        seq=seq,
        ts=T0,
        command=command.id,
        command_type=type(command).__struct_config__.tag,
        status=status,
        **fields,
    )
    return Received(f"edgeml/v1/{command.node}/ack", encode(message))


def node_that_applies(command: Any) -> list[Received]:
    """Accept, see every chunk go past (as serve would publish them), apply."""
    if not isinstance(command, Deploy):
        return [answer(command, "applied", 90)]
    ref = ModelRef(command.manifest.name, command.manifest.version)
    need = {"need": format_ranges(list(range(command.chunks)))}
    chunks = [
        Received(f"edgeml/v1/models/{ref.name}/{ref.version}/{i}", b"")
        for i in range(command.chunks)
    ]
    return [
        answer(command, "accepted", 1, model=ref, detail=need),
        *chunks,
        answer(command, "applied", 2, model=ref),
    ]


@pytest.fixture
def config(tmp_path: Path) -> HubConfig:
    return HubConfig(store=StoreConfig(db=str(tmp_path / "hub" / "hub.db")))


@pytest.fixture
def entry(config: HubConfig, tmp_path: Path) -> Iterator[CatalogEntry]:
    catalog = Catalog(config.store.models_path())
    yield catalog.register(model_folder(tmp_path / "src", "2", b"x" * 1000), T0)
    catalog.close()


def session(config: HubConfig, broker: Broker, out: io.StringIO, err: io.StringIO) -> Session:
    return Session(config, "test", client=broker, clock=Clock(), out=out, err=err)


def options(**changes: Any) -> argparse.Namespace:
    values = {"expires_in": 600.0, "chunk_size": 300, "timeout": 30.0, "settle": 0.0}
    return argparse.Namespace(**{**values, **changes})


def test_deploy_session_publishes_records_and_reports(
    config: HubConfig, entry: CatalogEntry
) -> None:
    broker, out, err = Broker(node_that_applies), io.StringIO(), io.StringIO()
    with session(config, broker, out, err) as s:
        code = deploy(s, entry, ["pump-1", "pump-2"], options())
    assert code == 0
    lines = out.getvalue().splitlines()
    assert [line.split()[:3] for line in lines] == [
        ["pump-1", "applied", "pump-pca@2"],
        ["pump-2", "applied", "pump-pca@2"],
    ]
    assert ("edgeml/v1/pump-1/ack", 1) in broker.subscribed
    assert ("edgeml/v1/models/pump-pca/2/+", 0) in broker.subscribed
    topics = [t for t, _ in broker.published]
    assert topics == ["edgeml/v1/pump-1/cmd", "edgeml/v1/pump-2/cmd"]
    sent = decode("cmd", broker.published[0][1])
    assert isinstance(sent, Deploy)
    assert (sent.node, sent.size, sent.chunk_size, sent.chunks) == ("pump-1", 1000, 300, 4)
    assert sent.manifest.sha256 == entry.sha256
    ledger = Ledger(config.store.ledger_path())
    try:
        history = {h.command.node: h for h in ledger.commands()}
    finally:
        ledger.close()
    assert [a.status for a in history["pump-1"].acks] == ["accepted", "applied"]
    assert history["pump-2"].command.args["chunk_size"] == 300
    assert "pump-2 4/4 chunks" in err.getvalue()


def test_deploy_session_without_chunks_times_out_and_names_serve(
    config: HubConfig, entry: CatalogEntry
) -> None:
    def accepts_only(command: Any) -> list[Received]:
        return [answer(command, "accepted", 1, detail={"need": "0-3"})]

    out, err = io.StringIO(), io.StringIO()
    with session(config, Broker(accepts_only), out, err) as s:
        assert deploy(s, entry, ["pump-1"], options(timeout=15.0)) == 1
    assert "is cloud-hub serve running?" in out.getvalue()
    assert "warning: no chunks were published" in err.getvalue()


def capture_chunks(command: Retrain, values: np.ndarray[Any, Any]) -> list[Received]:
    parts = np.array_split(values.astype(np.float32), 3)
    out = []
    for i, rows in enumerate(parts):
        chunk = Capture(
            node=command.node,
            boot="node-boot",
            seq=10 + i,
            ts=T0,
            command=command.id,
            chunk=i,
            chunks=len(parts),
            channels=["a", "b", "c"],
            t0=T0 + i,
            period=1.0,
            n=len(rows),
            data=pack_f32(rows),
        )
        out.append(Received(f"edgeml/v1/{command.node}/capture", encode(chunk)))
    return out


def test_retrain_session_trains_registers_and_deploys(config: HubConfig) -> None:
    rng = np.random.default_rng(3)
    readings = rng.normal(size=(240, 2)) @ np.array([[1.0, 0.5, 0.2], [0.0, 0.8, -0.4]])
    readings += 0.1 * rng.normal(size=readings.shape) + np.array([5.0, 1.0, 20.0])
    current = ModelRef("pump-pca", "4")

    def node(command: Any) -> list[Received]:
        if isinstance(command, Retrain):
            return [
                answer(command, "accepted", 1, model=current),
                *reversed(capture_chunks(command, readings)),
                answer(command, "applied", 2, model=current),
            ]
        return node_that_applies(command)

    broker, out = Broker(node), io.StringIO()
    args = options(node="pump-1", readings=240, mode="last", name=None, deploy=True)
    with session(config, broker, out, io.StringIO()) as s:
        assert retrain(s, config, args) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("pump-1  captured  240 readings of 3 channels")
    # The candidate's card beside the current model's (none in the catalog here), then the rest.
    assert lines[1].split() == ["CURRENT", "CANDIDATE"]
    assert lines[2].split() == ["model", "-", "pump-pca@1"]
    assert any(line.startswith("alarm ") and "close after 30" in line for line in lines)
    registered = lines.index("registered pump-pca@1")
    assert lines[registered + 1].startswith("pump-1  applied   pump-pca@1")
    catalog = Catalog(config.store.models_path())
    try:
        trained = catalog.get("pump-pca", "1")
    finally:
        catalog.close()
    assert trained is not None and trained.channels == ["a", "b", "c"]
    assert trained.trained_by.startswith("retrain ") and trained.trained_by.endswith("pump-1")
    sent = decode("cmd", broker.published[0][1])
    assert isinstance(sent, Retrain) and (sent.readings, sent.mode) == (240, "last")


class SlowNode(Broker):
    """A 1 Hz node (its retained birth says so) that uploads its capture ``after`` seconds
    after the retrain, as a node collecting the next readings does; the clock runs on while
    nothing arrives."""

    def __init__(self, clock: Clock, readings: np.ndarray[Any, Any], after: float) -> None:
        super().__init__(self.capture)
        self.clock, self.readings, self.after = clock, readings, after
        self.later: list[tuple[float, Received]] = []

    def subscribe(self, topics: list[tuple[str, int]], timeout: float) -> None:
        super().subscribe(topics, timeout)
        if ("edgeml/v1/pump-1/status", 1) in topics:
            status = Status(
                node="pump-1",
                boot="node-boot",
                seq=0,
                ts=T0,
                state="online",
                started_at=T0,
                capabilities=Capabilities(
                    channels=["a", "b", "c"],
                    sample_hz=1.0,
                    memory_mb=512.0,
                    cpu_count=2,
                    onnx_opset=17,
                    ort_version="1.17",
                    platform="linux",
                ),
            )
            self.inbox.append(Received("edgeml/v1/pump-1/status", encode(status)))

    def capture(self, command: Any) -> list[Received]:
        due = self.clock.now + self.after
        self.later = [(due, m) for m in capture_chunks(command, self.readings)]
        self.later.append((due, answer(command, "applied", 2)))
        return [answer(command, "accepted", 1)]

    def receive(self, timeout: float) -> Received | None:
        if not self.inbox and self.later and self.later[0][0] <= self.clock.now:
            self.inbox.extend(m for _, m in self.later)
            self.later = []
        if not self.inbox:
            self.clock.now += 1.0  # nothing yet: a second passes
        return super().receive(timeout)


def test_retrain_waits_for_a_capture_longer_than_the_timeout(config: HubConfig) -> None:
    # 300 readings at 1 Hz take 300 s; --timeout 30 is slack on top, not the whole wait.
    readings = np.random.default_rng(5).normal(size=(300, 3)) + 10.0
    clock = Clock()
    broker, out, err = SlowNode(clock, readings, after=301.0), io.StringIO(), io.StringIO()
    args = options(node="pump-1", readings=300, mode="next", name="m", deploy=False)
    with Session(config, "test", client=broker, clock=clock, out=out, err=err) as s:
        assert retrain(s, config, args) == 0
    assert out.getvalue().startswith("pump-1  captured  300 readings of 3 channels")
    assert "registered m@1" in out.getvalue()
    assert "readings captured, " in err.getvalue() and " s left" in err.getvalue()


def test_retrain_that_gives_up_names_the_capture_to_train_from_later(config: HubConfig) -> None:
    readings = np.random.default_rng(5).normal(size=(100, 3))
    clock = Clock()
    broker, out = SlowNode(clock, readings, after=200.0), io.StringIO()
    args = options(node="pump-1", readings=100, mode="next", name="m", deploy=False)
    with Session(config, "test", client=broker, clock=clock, out=out, err=io.StringIO()) as s:
        assert retrain(s, config, args) == 1
    sent = decode("cmd", broker.published[0][1])
    assert "within 130 s" in out.getvalue()
    assert f"cloud-hub train --capture {sent.id}" in out.getvalue()


def test_retrain_rejected_by_the_node_exits_1(config: HubConfig) -> None:
    def refuses(command: Any) -> list[Received]:
        return [answer(command, "rejected", 1, reason="capture already running")]

    out = io.StringIO()
    args = options(node="pump-1", readings=10, mode="next", name="m", deploy=False)
    with session(config, Broker(refuses), out, io.StringIO()) as s:
        assert retrain(s, config, args) == 1
    assert out.getvalue() == "pump-1  rejected  capture already running\n"


def test_progress_on_a_plain_stream_prints_changes_at_most_every_interval() -> None:
    stream = io.StringIO()
    line = ProgressLine(stream, tty=False, interval=2.0)
    line.show("pump-1 1/9 chunks", 0.5)
    line.show("pump-1 2/9 chunks", 1.0)  # too soon
    line.show("pump-1 2/9 chunks", 2.6)
    line.show("pump-1 2/9 chunks", 5.0)  # unchanged
    line.show("pump-1 applied", 5.1, force=True)
    assert stream.getvalue().splitlines() == [
        "[  0.5 s] pump-1 1/9 chunks",
        "[  2.6 s] pump-1 2/9 chunks",
        "[  5.1 s] pump-1 applied",
    ]


def test_progress_on_a_terminal_rewrites_one_line() -> None:
    stream = io.StringIO()
    line = ProgressLine(stream, tty=True)
    line.show("pump-1 waiting", 0.0)
    line.show("pump-1 applied", 0.3)
    line.close()
    assert stream.getvalue() == "\r[  0.0 s] pump-1 waiting\x1b[K\r[  0.3 s] pump-1 applied\x1b[K\n"


def test_listings_as_json(env: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["register", str(model_folder(tmp_path / "src", "2", b"model bytes"))]) == 0
    capsys.readouterr()
    assert main(["models", "--json"]) == 0
    (model,) = json.loads(capsys.readouterr().out)
    assert (model["name"], model["version"], model["size"]) == ("pump-pca", "2", 11)
    assert model["channels"] == list(MANIFEST.input.channels)
    assert main(["commands", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_log_level_goes_before_or_after_the_subcommand(
    capsys: pytest.CaptureFixture[str],
) -> None:
    before = build_parser().parse_args(["--log-level", "debug", "models"])
    after = build_parser().parse_args(["--log-level", "debug", "models", "--log-level", "error"])
    default = build_parser().parse_args(["models"])
    assert (before.global_log_level, before.log_level) == ("DEBUG", None)
    assert after.log_level == "ERROR"  # after the subcommand wins
    assert (default.log_level, default.global_log_level, default.default_log_level) == (
        None,
        None,
        "WARNING",
    )
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(["models", "--log-level", "loud"])
    assert exit_.value.code == 2
    assert "choose from 'DEBUG', 'INFO', 'WARNING', 'ERROR'" in capsys.readouterr().err
