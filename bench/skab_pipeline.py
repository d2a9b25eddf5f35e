"""The pipeline's flags are the benchmark's flags: SKAB valve1 through edge node, Mosquitto, hub.

Per file (one broker and one hub for the run): an ``edge-node run`` process replays the file at
``--speed`` readings per second with a placeholder model; once its birth is seen, the real
``cloud-hub retrain --readings 400 --mode next --deploy`` captures readings ``[c, c + 400)``,
trains the default recipe on them, registers and deploys the model, and the node switches to it
at row ``s``. A tap (the hub's account) records every result batch. Offline, the deployed model
(from the hub's catalog, run by the edge runtime) scores rows ``[s, end)`` with windows reaching
back and a fresh alarm at ``s``, and its flags are compared with the published ones reading by
reading. The hub's own counters must equal the tap's totals, so the figure is the hub's.

The protocol figure (fit on rows [0, 400), score [400, end)) is measured in the same run as the
baseline; the pipeline figure covers rows [s, end) because the switch comes s - 400 readings
(training and deploy time at the replay speed) after the capture ends.

    .venv/bin/python bench/skab_pipeline.py [--files 0-15] [--speed 20] [--skab-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import queue
import re
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from cloud_hub.models.captures import CaptureAssembly  # noqa: E402
from cloud_hub.models.onnx_export import save_model, train_model  # noqa: E402
from cloud_hub.models.trainer import DEFAULTS, TrainConfig, fit, sliding_windows  # noqa: E402
from cloud_hub.models.validation import TRAIN_ROWS, Counts, Labelled, validate  # noqa: E402
from edge_node.scoring.runtime import ModelRuntime  # noqa: E402
from schemas.alarm import apply  # noqa: E402
from schemas.codec import decode  # noqa: E402
from schemas.messages import Capture, ModelRef, ResultBatch  # noqa: E402
from schemas.packing import unpack_f32, unpack_flags  # noqa: E402
from schemas.readings_csv import CsvData, read_csv  # noqa: E402
from tests.broker import Broker  # noqa: E402
from tests.integration.processes import Hub, Node, node_config, wait_for  # noqa: E402
from tests.mqtt_clients import close, mqtt_client, state, subscribe  # noqa: E402

DEFAULT_SKAB = Path(os.environ.get("SKAB_DIR", REPO.parent / "shared" / "data" / "skab"))
MODEL_NAME = "skab"
BoolArray = NDArray[np.bool_]
F32 = NDArray[np.float32]


@dataclass
class Stream:
    """What the tap saw of one node."""

    online: bool = False
    results: list[ResultBatch] = field(default_factory=list)
    captures: list[Capture] = field(default_factory=list)


class Tap:
    """Records status, results and captures of every node as the broker passes them on."""

    def __init__(self, broker: Broker) -> None:
        self.client = mqtt_client(broker, "hub", client_id=f"skab-tap-{secrets.token_hex(3)}")
        for kind in ("status", "result", "capture"):
            subscribe(self.client, f"edgeml/v1/+/{kind}")
        self.streams: dict[str, Stream] = {}

    def pump(self, timeout: float = 0.1) -> None:
        """Sort the messages received so far (waiting up to ``timeout`` for the first)."""
        messages = state(self.client).messages
        try:
            message = messages.get(timeout=timeout)
        except queue.Empty:
            return
        while True:
            node, kind = message.topic.split("/")[2:4]
            stream = self.streams.setdefault(node, Stream())
            payload = bytes(message.payload)
            if kind == "status" and payload:
                stream.online |= decode("status", payload).state == "online"
            elif kind == "result":
                stream.results.append(decode("result", payload))
            elif kind == "capture":
                stream.captures.append(decode("capture", payload))
            try:
                message = messages.get_nowait()
            except queue.Empty:
                return

    def until(self, check: Callable[[], bool], timeout: float, what: str) -> None:
        """Pump until ``check()`` holds; TimeoutError naming ``what``."""
        deadline = time.monotonic() + timeout
        while not check():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
            self.pump()


@dataclass
class FileRun:
    """One file's outcome."""

    name: str
    c: int = -1
    s: int = -1
    compared: int = 0
    mismatches: int = -1
    score_diff: float = float("nan")
    same_model: bool = False
    hub_match: bool = False
    pipeline: Counts = field(default_factory=Counts)
    offline: Counts = field(default_factory=Counts)
    seconds: float = 0.0
    note: str = ""


@dataclass(frozen=True)
class Published:
    """The node's whole stream in file-row order."""

    wall0: float
    models: list[ModelRef]  # per row
    scores: F32
    flags: BoolArray


def assemble(results: list[ResultBatch], rows: int) -> Published:
    """Rows from reading indexes, checked: contiguous, complete, stamped t0 + i * period."""
    batches = sorted(results, key=lambda b: b.first)
    if not batches or batches[0].first != 0:
        raise ValueError("the stream does not start at reading 0")
    wall0, period = batches[0].t0, batches[0].period
    models: list[ModelRef] = []
    scores, flags = [], []
    for b in batches:
        if b.first != len(models):
            raise ValueError(f"readings {len(models)}..{b.first - 1} missing or repeated")
        if abs(b.t0 - (wall0 + b.first * period)) > 1e-3 * period:
            raise ValueError(f"batch at reading {b.first} is stamped {b.t0 - wall0:.6f} s in")
        models += [b.model] * b.n
        scores.append(unpack_f32(b.scores))
        flags.append(unpack_flags(b.flags, b.n))
    if len(models) != rows:
        raise ValueError(f"{len(models)} readings published, the file has {rows}")
    return Published(wall0, models, np.concatenate(scores), np.concatenate(flags))


def capture_start(captures: list[Capture], data: CsvData, wall0: float) -> int:
    """Row ``c`` of the capture's first reading, checked against the file's readings."""
    if not captures:
        raise ValueError("the tap saw no capture")
    assembly = CaptureAssembly(captures[0].command, captures[0].node)
    for chunk in captures:
        assembly.add(chunk)
    captured = assembly.assemble()
    c = round((captured.t0 - wall0) / captured.period)
    expected = data.values[c : c + len(captured.values)]
    if not np.array_equal(captured.values, expected.astype(np.float32)):
        raise ValueError(f"captured readings differ from file rows {c}..")
    return c


def offline_flags(model_dir: Path, data: CsvData, s: int) -> tuple[F32, BoolArray, float]:
    """Scores and flags of rows [s, end) by the deployed model (edge runtime, windows reaching
    back, fresh alarm at s); also its threshold."""
    runtime = ModelRuntime.load(model_dir, sensors=data.channels)
    manifest = runtime.manifest
    columns = [data.channels.index(c) for c in manifest.input.channels]
    values = np.asarray(data.values[:, columns], dtype=np.float32)
    windows = sliding_windows(values[s - runtime.window + 1 :], runtime.window)
    scores, _ = runtime.score(windows)
    scored = np.isfinite(scores)
    flags = apply(manifest.alarm, scored & (scores > manifest.threshold)) & scored
    return scores, flags, manifest.threshold


def hub_counts_match(hub: Hub, node: str, pub: Published, timeout: float = 20.0) -> bool:
    """The hub's readings and flagged readings of ``node`` equal the tap's, all models."""
    readings, flagged = len(pub.flags), int(pub.flags.sum())
    try:
        wait_for(
            lambda: hub.value("edgeml_readings_total", node=node) >= readings, timeout, "hub", hub
        )
    except AssertionError:
        return False
    return (
        hub.value("edgeml_readings_total", node=node) == readings
        and hub.value("edgeml_anomalous_readings_total", node=node) == flagged
    )


@dataclass(frozen=True)
class Setup:
    """What every file's run shares."""

    broker: Broker
    hub: Hub
    tap: Tap
    work: Path
    placeholder: Path
    speed: float


def retrain(setup: Setup, node: str) -> tuple[str, str]:
    """Run the real ``cloud-hub retrain ... --deploy``; the registered (name, version)."""
    args = ["retrain", "--node", node, "--readings", str(TRAIN_ROWS), "--mode", "next"]
    args += ["--name", MODEL_NAME, "--deploy", "--timeout", "120"]
    log = setup.work / f"retrain-{node}.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "cloud-hub"), *args],
            env={**os.environ, **setup.hub.env},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 180
        while proc.poll() is None:  # the tap keeps sorting while the CLI works
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise TimeoutError("cloud-hub retrain did not finish in 180 s")
            setup.tap.pump()
    output = log.read_text(errors="replace")
    found = re.search(rf"registered ({MODEL_NAME})@(\S+)", output)
    if proc.returncode != 0 or found is None:
        raise RuntimeError(f"cloud-hub retrain exited {proc.returncode}:\n{output}")
    return found.group(1), found.group(2)


def run_file(setup: Setup, index: int, path: Path) -> FileRun:
    """Replay one file through the pipeline and compare it with the offline flags."""
    started = time.monotonic()
    run, node = FileRun(path.name), f"valve1-{index}"
    data = read_csv(path)
    source = f'kind = "csv"\npaths = ["{path}"]\nspeed = {setup.speed}\n'
    config = node_config(
        setup.work / f"{node}.toml",
        node=node,
        broker=setup.broker,
        model_dir=setup.placeholder,
        source=source,
    )
    process = Node(config, exit_when_drained=True)
    try:
        stream = setup.tap.streams.setdefault(node, Stream())
        setup.tap.until(lambda: stream.online, 30, f"{node} online")
        name, version = retrain(setup, node)
        if (code := process.wait(len(data.values) / setup.speed + 60)) != 0:
            raise RuntimeError(f"edge-node exited {code}: {process.output(5)}")
        setup.tap.until(
            lambda: sum(b.n for b in stream.results) >= len(data.values), 30, "all results"
        )
        pub = compare(setup, run, data, stream, ModelRef(name, version))
        run.hub_match = hub_counts_match(setup.hub, node, pub)
    except (RuntimeError, TimeoutError, ValueError, subprocess.TimeoutExpired) as exc:
        run.note = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        process.stop()
    run.seconds = time.monotonic() - started
    return run


def compare(setup: Setup, run: FileRun, data: CsvData, stream: Stream, ref: ModelRef) -> Published:
    """Fill ``run`` with the switch row, the capture row and the comparison on [s, end)."""
    pub = assemble(stream.results, len(data.values))
    deployed = [i for i, m in enumerate(pub.models) if m == ref]
    if not deployed or deployed[-1] != len(pub.models) - 1:
        raise ValueError(f"{ref.name}@{ref.version} did not score to the end")
    run.s = deployed[0]
    if len(deployed) != len(pub.models) - run.s:
        raise ValueError("the deployed model did not score every reading after its switch")
    run.c = capture_start(stream.captures, data, pub.wall0)
    model_dir = setup.hub.db.parent / "models" / ref.name / ref.version
    scores, flags, threshold = offline_flags(model_dir, data, run.s)
    own = fit(data.values[run.c : run.c + TRAIN_ROWS], data.channels, DEFAULTS["pca"])
    run.same_model = bool(np.isclose(own.threshold, threshold, rtol=1e-6))
    published = pub.flags[run.s :]
    run.compared = len(published)
    run.mismatches = int(np.sum(published != flags))
    # onnxruntime's float32 sums differ in the last bits between batch sizes (the node scores
    # a block of a reading or two, offline all at once): relative, about 1e-5.
    diff = np.abs(pub.scores[run.s :] - scores) / np.maximum(np.abs(scores), 1e-6)
    run.score_diff = float(np.max(diff))
    labels = _labels(data)[run.s :]
    run.pipeline.add(published, labels)
    run.offline.add(flags, labels)
    return pub


def _labels(data: CsvData) -> BoolArray:
    if data.anomaly is None:
        raise ValueError("the file has no 'anomaly' column")
    return data.anomaly


def placeholder_model(folder: Path, skab: Path) -> Path:
    """The node's first model, trained on the healthy recording (replaced by the retrain)."""
    healthy = read_csv(skab / "anomaly-free" / "anomaly-free.csv")
    values, channels, now = healthy.values[:3000], healthy.channels, time.time()
    model = train_model(values, channels, name="placeholder", version="1", trained_by="bench",
                        config=TrainConfig(), now=now)  # fmt: skip
    save_model(folder, *model)
    return folder


def figures(c: Counts) -> str:
    """F1/FAR/MAR of counts."""
    return f"{c.f1():.3f} {c.far():6.1%} {c.mar():6.1%}"


def report(runs: list[FileRun], paths: list[Path]) -> None:
    """The per-file table, the pooled line and the protocol baseline."""
    head = f"{'file':<7}{'c':>4}{'s':>5}{'compared':>9}{'mism':>6}{'rel|ds|':>9}"
    print(f"{head}  same  {'pipeline F1 FAR MAR':<22}{'offline F1 FAR MAR':<22}hub   time")
    pipe, off = Counts(), Counts()
    for r in runs:
        pipe += r.pipeline
        off += r.offline
        print(
            f"{r.name:<7}{r.c:>4}{r.s:>5}{r.compared:>9}{r.mismatches:>6}{r.score_diff:>9.1e}"
            f"  {'yes' if r.same_model else 'no':<4}  {figures(r.pipeline):<22}"
            f"{figures(r.offline):<22}{'yes' if r.hub_match else 'NO':<5}{r.seconds:5.0f}s"
            + (f"  {r.note}" if r.note else "")
        )
    ok = all(not r.note and r.mismatches == 0 and r.hub_match and r.same_model for r in runs)
    print(
        f"pooled {sum(r.compared for r in runs)} readings, "
        f"{sum(max(r.mismatches, 0) for r in runs)} mismatches: pipeline F1/FAR/MAR "
        f"{figures(pipe)}, offline {figures(off)}; all files clean: {'yes' if ok else 'NO'}"
    )
    files = [read_csv(path) for path in paths]
    recordings = [Labelled(p.name, d.values, _labels(d)) for p, d in zip(paths, files, strict=True)]
    summary, _ = validate(recordings, DEFAULTS["pca"], files[0].channels)
    print(
        f"baseline (protocol: fit rows [0, {TRAIN_ROWS}), score [{TRAIN_ROWS}, end), "
        f"{summary.readings} readings): F1 {summary.f1:.3f} FAR {summary.far:6.1%} "
        f"MAR {summary.mar:6.1%}; pipeline F1 / protocol F1 = {pipe.f1() / summary.f1:.2f}"
    )
    print(
        "The pipeline model is trained on rows [c, c+400) the node captured and scores from its "
        "switch at row s (s - c - 400 readings of training and deploy at the replay speed), "
        "so it covers fewer, later rows than the protocol; 'same' = the hub's threshold equals "
        "an offline fit on the file's rows [c, c+400); 'hub' = the hub's /metrics readings and "
        "flagged readings equal the tap's totals for the node."
    )


def parse_files(text: str) -> list[int]:
    """``0-3,7`` -> [0, 1, 2, 3, 7]."""
    out: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        out += range(int(low), int(high or low) + 1)
    return out


def main() -> None:
    """Run the bench."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", default="0-15", help="valve1 file numbers, e.g. 0-3,7")
    parser.add_argument("--speed", type=float, default=20.0, help="readings per second")
    parser.add_argument("--skab-dir", type=Path, default=DEFAULT_SKAB)
    args = parser.parse_args()
    indexes = parse_files(args.files)
    paths = [args.skab_dir / "valve1" / f"{i}.csv" for i in indexes]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        sys.exit(f"SKAB files not found: {missing} (set --skab-dir or SKAB_DIR)")
    started = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        users = {n: secrets.token_urlsafe(12) for n in ("hub", *(f"valve1-{i}" for i in indexes))}
        broker = Broker(work / "mq", users)
        broker.start()
        hub: Hub | None = None
        tap: Tap | None = None
        try:
            hub = Hub(broker, work / "hub", client_id="hub-skab")
            hub.wait_ready()
            tap = Tap(broker)
            placeholder = placeholder_model(work / "placeholder", args.skab_dir)
            setup = Setup(broker, hub, tap, work, placeholder, args.speed)
            runs = []
            for i, path in zip(indexes, paths, strict=True):
                runs.append(run_file(setup, i, path))
                print(f"  {path.name}: done in {runs[-1].seconds:.0f} s", flush=True)
        finally:
            if tap is not None:
                close(tap.client)
            if hub is not None:
                hub.stop()
            broker.stop()
    print(
        f"speed {args.speed:g} readings/s, files {args.files}, {time.monotonic() - started:.0f} s"
    )
    report(runs, paths)


if __name__ == "__main__":
    main()
