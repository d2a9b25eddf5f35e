"""The demo: Mosquitto, cloud-hub and three simulated pumps, with a live fleet table.

pump-3 develops a pressure fault about a minute in. Ctrl-C stops every process. Run it through
scripts/demo.sh, which prepares the virtualenv and the broker first.
"""

from __future__ import annotations

import argparse
import os
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
from tests.broker import Broker, free_port  # noqa: E402

BIN = Path(sys.executable).parent
PUMPS = ("pump-1", "pump-2", "pump-3")
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
    users = {name: secrets.token_urlsafe(12) for name in ("hub", *PUMPS)}
    broker = Broker(work / "mosquitto", users)
    broker.start()
    children: list[subprocess.Popen[bytes]] = []
    try:
        metrics_port = free_port()
        children.append(_hub(work, broker, metrics_port))
        for index, name in enumerate(PUMPS):
            children.append(
                _node(work, broker, name, index=index, model=model, rate_hz=args.rate_hz)
            )
        url = f"http://127.0.0.1:{metrics_port}/metrics"
        print(f"broker mqtt://127.0.0.1:{broker.port}  metrics {url}  logs {work}/*.log")
        _watch(work, url, args, stop, children)
    finally:
        for child in children:
            child.send_signal(signal.SIGTERM)
        for child in children:
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()
        broker.stop()
        print("stopped broker, hub and nodes")
    return 0


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
    }
    return _spawn([str(BIN / "cloud-hub"), "serve"], env, work / "hub.log")


def _node(
    work: Path, broker: Broker, name: str, *, index: int, model: Path, rate_hz: float
) -> subprocess.Popen[bytes]:
    faults = f'["{FAULT}"]' if name == "pump-3" else "[]"
    config = work / f"{name}.toml"
    config.write_text(
        f'[node]\nid = "{name}"\ndata_dir = "{work / name}"\n'
        f'[mqtt]\nport = {broker.port}\npassword = "{broker.users[name]}"\n'
        f'[model]\ninitial = "{model}"\n'
        f"[batch]\nmax_age_s = 1.0\n"
        f"[telemetry]\ninterval_s = 5.0\ndrift_interval_s = 60.0\n"
        f'[source]\nkind = "sim"\nseed = {index + 1}\nrate_hz = {rate_hz}\nfaults = {faults}\n'
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
        readings = _readings(url)
        rate = ""
        if readings is not None:
            first = first or (now, readings)
            if now > first[0]:
                rate = f"  end-to-end {(readings - first[1]) / (now - first[0]):.1f} readings/s"
        table = subprocess.run(
            [str(BIN / "cloud-hub"), "nodes", "--db", str(work / "hub.db")],
            capture_output=True,
            text=True,
            check=False,
        )
        if not args.plain:
            print("\033[2J\033[H", end="")
        print(f"t = {now - started:5.0f} s   hub counted {readings or 0:.0f} readings{rate}")
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


def _readings(url: str) -> float | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return None
    return sum(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "edgeml_readings_total"
    )


if __name__ == "__main__":
    raise SystemExit(main())
