"""The demo: Mosquitto, cloud-hub and three simulated pumps, with a live fleet table.

pump-2's node reads its sensors over Modbus TCP from a simulated device, as a node beside a
real pump would; pump-3 develops a pressure fault about a minute in. Ctrl-C stops every process,
in the order that loses nothing: the nodes first (each sends what its outbox holds), then the
hub once it has applied everything the broker delivered, then the broker. Run it through
scripts/demo.sh, which prepares the virtualenv and the broker first.
"""

from __future__ import annotations

import argparse
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from types import FrameType

from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# The broker runner that the integration tests use: the project's own config, ACL and passwords.
from cloud_hub.commands import keys  # noqa: E402
from tests.broker import Broker, free_port  # noqa: E402
from tests.industrial import modbus_source_toml  # noqa: E402

BIN = Path(sys.executable).parent
PUMPS = ("pump-1", "pump-2", "pump-3")
MODBUS_PUMP = "pump-2"  # read through a simulated Modbus TCP device
FAULT = "drift:pressure:60:1800:90"  # pump-3: pressure drifts 3 SD a minute from t = 60 s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=0, help="stop after N s (0: Ctrl-C)")
    parser.add_argument("--rate-hz", type=float, default=10.0, help="readings/s per pump")
    parser.add_argument("--workdir", type=Path, default=REPO / "var" / "demo")
    parser.add_argument("--plain", action="store_true", help="append tables, no screen clearing")
    args = parser.parse_args()
    stop = {"now": False}

    def _stop(_signum: int, _frame: FrameType | None) -> None:
        stop["now"] = True

    signal.signal(signal.SIGINT, _stop)
    signal.signal(signal.SIGTERM, _stop)
    work = args.workdir
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    model = _train(work, args.rate_hz)
    keys.generate(work / "hub.key")  # commands and manifests signed, nodes trusting this key
    users = {name: secrets.token_urlsafe(12) for name in ("hub", *PUMPS)}
    broker = Broker(work / "mosquitto", users)
    broker.start()
    nodes: list[subprocess.Popen[bytes]] = []
    hub: subprocess.Popen[bytes] | None = None
    metrics_port = free_port()
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    device: subprocess.Popen[bytes] | None = None
    try:
        hub = _hub(work, broker, metrics_port)
        device, device_port = _modbus_device(
            work, seed=PUMPS.index(MODBUS_PUMP) + 1, rate_hz=args.rate_hz
        )
        for index, name in enumerate(PUMPS):
            port = device_port if name == MODBUS_PUMP else None
            nodes.append(
                _node(
                    work, broker, name, index=index, model=model, rate_hz=args.rate_hz, modbus=port
                )
            )
        print(f"broker mqtt://127.0.0.1:{broker.port}  metrics {url}  logs {work}/*.log")
        _watch(work, url, args, stop, [hub, *nodes])
    finally:
        _stop_in_order(work, url, nodes, hub, broker)
        if device is not None:
            device.send_signal(signal.SIGTERM)
            _wait(device, 10)
    return 0


def _stop_in_order(
    work: Path,
    url: str,
    nodes: list[subprocess.Popen[bytes]],
    hub: subprocess.Popen[bytes] | None,
    broker: Broker,
) -> None:
    """Nodes, then the hub once it has applied everything, then the broker: nothing unsent."""
    print("stopping the nodes (each sends what its outbox holds) ...", flush=True)
    for node in nodes:
        node.send_signal(signal.SIGTERM)
    for node in nodes:
        _wait(node, 20)
    left = {name: _left_in_outbox(work / f"{name}.log") for name in PUMPS[: len(nodes)]}
    unsent = {name: n for name, n in left.items() if n}
    print(f"nodes stopped; left in their outboxes: {unsent or 'nothing'}", flush=True)
    if hub is not None:
        applied = _wait_until_hub_applied_all(url)
        print(f"hub applied everything delivered ({applied:.0f} readings); stopping it ...")
        hub.send_signal(signal.SIGTERM)
        _wait(hub, 20)
    broker.stop()
    print("stopped broker, hub and nodes")


def _wait(child: subprocess.Popen[bytes], timeout: float) -> None:
    try:
        child.wait(timeout)
    except subprocess.TimeoutExpired:
        print(f"demo: {child.args!r} did not stop in {timeout:.0f} s; killing it")
        child.kill()
        child.wait()


def _left_in_outbox(log: Path) -> int:
    """What the node said it left in its outbox when it stopped (-1: it did not say)."""
    said = re.findall(
        r"stopping; (\d+) messages stay in the outbox", log.read_text(errors="replace")
    )
    return int(said[-1]) if said else -1


def _wait_until_hub_applied_all(url: str, timeout: float = 15.0) -> float:
    """Readings the hub counted once its backlog is empty and its count stops moving."""
    deadline = time.monotonic() + timeout
    last: float | None = None
    while time.monotonic() < deadline:
        values = _metrics(url)
        readings = values.get("edgeml_readings_total")
        if readings is not None and values.get("edgeml_ingest_backlog") == 0 and readings == last:
            return readings
        last = readings
        time.sleep(0.5)
    return last or 0.0


def _train(work: Path, rate_hz: float) -> Path:
    """Train the fleet's first model on two hours of healthy readings from four other pumps.

    Each simulated pump wanders slowly around its own operating point, like real ones; a model
    fitted on one pump for half an hour would call its healthy neighbours anomalous.
    """
    model = work / "models" / "pump-pca-1"
    history = [work / f"healthy-{seed}.csv" for seed in (11, 12, 13, 14)]
    for seed, csv in zip((11, 12, 13, 14), history, strict=True):
        simulate = f"simulate --out {csv} --seconds 7200 --rate-hz {rate_hz} --seed {seed}"
        _check([str(BIN / "edge-node"), "--log-level", "WARNING", *simulate.split()])
    sources = " ".join(f"--csv {csv}" for csv in history)
    train = f"train --log-level WARNING {sources} --name pump-pca --version 1 --out {model}"
    _check([str(BIN / "cloud-hub"), *train.split()])
    return model


def _check(cmd: list[str]) -> None:
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        sys.exit(f"demo: {' '.join(cmd)} failed:\n{done.stdout}{done.stderr}")
    print(done.stdout.strip())


def _hub(work: Path, broker: Broker, metrics_port: int) -> subprocess.Popen[bytes]:
    env = {
        "CLOUD_HUB__MQTT__PORT": str(broker.port),
        "CLOUD_HUB__MQTT__PASSWORD": broker.users["hub"],
        "CLOUD_HUB__STORE__DB": str(work / "hub.db"),
        "CLOUD_HUB__METRICS__PORT": str(metrics_port),
        "CLOUD_HUB__SECURITY__SIGNING_KEY": str(work / "hub.key"),
    }
    return _spawn([str(BIN / "cloud-hub"), "serve"], env, work / "hub.log")


def _modbus_device(work: Path, *, seed: int, rate_hz: float) -> tuple[subprocess.Popen[bytes], int]:
    """A simulated pump behind a Modbus TCP server on a free loopback port, ready to read."""
    port = free_port()
    cmd = [sys.executable, "-m", "tests.industrial", "modbus", "--port", str(port)]
    cmd += ["--rate-hz", str(rate_hz), "--seed", str(seed)]
    log = work / "modbus-pump.log"
    device = _spawn(cmd, {"PYTHONPATH": str(REPO)}, log)
    deadline = time.monotonic() + 20
    while b"ready" not in log.read_bytes():
        if device.poll() is not None or time.monotonic() > deadline:
            sys.exit(f"demo: the simulated Modbus device did not start:\n{log.read_text()}")
        time.sleep(0.1)
    return device, port


def _node(
    work: Path,
    broker: Broker,
    name: str,
    *,
    index: int,
    model: Path,
    rate_hz: float,
    modbus: int | None,
) -> subprocess.Popen[bytes]:
    faults = f'["{FAULT}"]' if name == "pump-3" else "[]"
    source = (
        modbus_source_toml("127.0.0.1", modbus, rate_hz)
        if modbus is not None
        else f'[source]\nkind = "sim"\nseed = {index + 1}\nrate_hz = {rate_hz}\nfaults = {faults}\n'
    )
    config = work / f"{name}.toml"
    config.write_text(
        f'[node]\nid = "{name}"\ndata_dir = "{work / name}"\n'
        f'[mqtt]\nport = {broker.port}\npassword = "{broker.users[name]}"\n'
        f'[model]\ninitial = "{model}"\n'
        f"[batch]\nmax_age_s = 1.0\n"
        f"[telemetry]\ninterval_s = 5.0\ndrift_interval_s = 60.0\n"
        f'[security]\nhub_keys = ["{keys.public_path(work / "hub.key").read_text().strip()}"]\n'
        + source
    )
    return _spawn(
        [str(BIN / "edge-node"), "run", "--config", str(config)], {}, work / f"{name}.log"
    )


def _spawn(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        # Children ignore the terminal's Ctrl-C; the demo stops them itself, in order.
        return subprocess.Popen(
            cmd,
            env={**os.environ, **env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _watch(
    work: Path,
    url: str,
    args: argparse.Namespace,
    stop: dict[str, bool],
    children: list[subprocess.Popen[bytes]],
) -> None:
    started = time.monotonic()
    first: tuple[float, float] | None = None
    while not stop["now"]:
        time.sleep(2.0)
        now = time.monotonic()
        dead = [c.args for c in children if c.poll() is not None]
        if dead:
            print(f"demo: a process exited early: {dead}; see the logs in {work}")
            return
        readings = _metrics(url).get("edgeml_readings_total")
        rate = ""
        if readings is not None:
            first = first or (now, readings)
            if now > first[0]:
                rate = f"  end-to-end {(readings - first[1]) / (now - first[0]):.1f} readings/s"
        # Nodes send telemetry every 5 s: a registry 12 s old means the hub is not writing.
        table = subprocess.run(
            [str(BIN / "cloud-hub"), "nodes", "--db", str(work / "hub.db"), "--stale-after", "12"],
            capture_output=True,
            text=True,
            check=False,
        )
        if not args.plain:
            print("\033[2J\033[H", end="")
        hub = (
            f"hub alive, counted {readings:.0f} readings{rate}"
            if readings is not None
            else "hub NOT ANSWERING on /metrics"
        )
        print(f"{time.strftime('%H:%M:%S')}  t = {now - started:5.0f} s   {hub}")
        print(table.stdout or table.stderr)
        # Alarm and drift state with the culprit channel: open episodes and the drift states.
        episodes = subprocess.run(
            [str(BIN / "cloud-hub"), "events", "--db", str(work / "events.db"), "--open"],
            capture_output=True,
            text=True,
            check=False,
        )
        print(f"open episodes:\n{episodes.stdout or episodes.stderr}drift: {_drift(url)}")
        print(f"metrics: {url}   Ctrl-C stops everything")
        if args.duration and now - started >= args.duration:
            return


def _drift(url: str) -> str:
    """``pump-1 ok, pump-3 drifting`` from the hub's edgeml_drift_state."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return "-"
    states = sorted(
        f"{s.labels['node']} {s.labels['state']}"
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "edgeml_drift_state" and s.value == 1
    )
    return ", ".join(states) or "no reports yet"


def _metrics(url: str) -> dict[str, float]:
    """Each sample name's sum over its labels; empty when the hub does not answer."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    sums: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            sums[sample.name] = sums.get(sample.name, 0.0) + sample.value
    return sums


if __name__ == "__main__":
    raise SystemExit(main())
