"""Measure a real ``edge-node run`` process: launch to first published reading and resident
memory, each beside a baseline measured the same way: a bare Python process that imports numpy,
onnxruntime and paho, opens the same model with the node's session options, scores one window
and publishes one message.

Used by bench/node_process.py and tests/integration/test_node_process.py. A subscriber with the
hub's account, connected before a process is launched, times its first message at the broker.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import paho.mqtt.client as mqtt

from cloud_hub.models.onnx_export import save_model, train_model
from cloud_hub.models.trainer import TrainConfig
from edge_node.sources.simulator import PumpSimulator
from schemas.readings_csv import write_csv
from schemas.topics import Kind, node_topic
from tests.broker import Broker
from tests.integration.processes import Node
from tests.mqtt_clients import close, mqtt_client, state, subscribe

# The baseline process: the libraries and the model session a node cannot do without, one
# window scored and one message published; it prints its resident memory (kB) and waits for
# stdin to close, so that its memory can be read while it still holds everything.
_BARE = """
import sys, numpy as np, onnxruntime as ort, paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
model, host, port, user, password, topic = sys.argv[1:7]
options = ort.SessionOptions()
options.intra_op_num_threads = 1
options.inter_op_num_threads = 1
options.enable_cpu_mem_arena = False
session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
shape = [1 if not isinstance(d, int) else d for d in session.get_inputs()[0].shape]
scores = session.run(None, {session.get_inputs()[0].name: np.zeros(shape, np.float32)})[0]
client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=user, protocol=mqtt.MQTTv5)
client.username_pw_set(user, password)
client.connect(host, int(port))
client.loop_start()
client.publish(topic, scores.tobytes(), qos=1).wait_for_publish(10)
print(open("/proc/self/status").read().split("VmRSS:")[1].split()[0], flush=True)
sys.stdin.read()
client.disconnect()
client.loop_stop()
"""


def train_sim_model(folder: Path, window: int = 16) -> Path:
    """A model trained on simulated pump readings (the channels the ``sim`` source gives)."""
    sim = PumpSimulator(seed=5, rate_hz=1.0, speed=0, wall_start=0.0, max_block=3000)
    block = sim.poll(0.0)
    assert block is not None
    onnx, manifest = train_model(
        block.values,
        sim.channels,
        name="pump-sim",
        version="1",
        trained_by="bench",
        config=TrainConfig(window=window),
        now=time.time(),
    )
    save_model(folder, onnx, manifest)
    return folder


def sim_csv(path: Path, rate_hz: float, seconds: float = 60.0) -> Path:
    """``seconds`` of simulated pump readings at ``rate_hz`` as a readings CSV (to loop)."""
    n = int(seconds * rate_hz)
    sim = PumpSimulator(seed=6, rate_hz=rate_hz, speed=0, wall_start=0.0, max_block=n)
    block = sim.poll(0.0)
    assert block is not None
    write_csv(path, sim.channels, 1_700_000_000.0, 1.0 / rate_hz, block.values[:n])
    return path


def rss_kb(pid: int) -> int:
    """Resident memory of process ``pid`` in kB (Linux /proc)."""
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0])


def node_config(
    path: Path, broker: Broker, node: str, model: Path, *, rate_hz: float, source: str
) -> Path:
    """A node config reading ``source`` ("sim", or "csv": simulated readings written to a file
    and replayed in a loop) at ``rate_hz`` in real time, with default timers."""
    if source == "csv":
        csv = sim_csv(path.with_suffix(".csv"), rate_hz)
        table = f'kind = "csv"\npaths = ["{csv}"]\nloop = true\nspeed = 1.0\n'
    else:
        table = f'kind = "sim"\nrate_hz = {rate_hz}\nspeed = 1.0\n'
    path.write_text(
        f'[node]\nid = "{node}"\ndata_dir = "{path.parent / (node + "-data")}"\n'
        f'[mqtt]\nport = {broker.port}\npassword = "{broker.users[node]}"\n'
        f'[model]\ninitial = "{model}"\n'
        f"[source]\n{table}"
    )
    return path


@dataclass
class Launched:
    """A running process, the seconds from its launch to its first message at the broker,
    and the subscriber that saw it (close both with :meth:`stop`)."""

    pid: int
    stop_process: Callable[[], object]
    first_message_s: float = 0.0
    subscriber: mqtt.Client | None = None
    popen: subprocess.Popen[str] | None = None

    def stop(self) -> None:
        self.stop_process()
        if self.subscriber is not None:
            close(self.subscriber)


def _first_message(broker: Broker, topic: str, start: Callable[[], Launched]) -> Launched:
    subscriber = mqtt_client(broker, "hub")
    subscribe(subscriber, topic)
    began = time.monotonic()
    launched = start()
    try:
        state(subscriber).messages.get(timeout=30.0)
    except BaseException:
        launched.stop_process()
        close(subscriber)
        raise AssertionError(f"no message on {topic} within 30 s") from None
    launched.first_message_s = time.monotonic() - began
    launched.subscriber = subscriber
    return launched


def launch_node(
    broker: Broker, work: Path, node: str, model: Path, *, rate_hz: float, source: str = "sim"
) -> Launched:
    """Start ``edge-node run`` and wait for its first result message at a subscriber."""
    config = node_config(work / f"{node}.toml", broker, node, model, rate_hz=rate_hz, source=source)

    def start() -> Launched:
        proc = Node(config, exit_when_drained=False)
        return Launched(proc.popen.pid, proc.stop)

    return _first_message(broker, node_topic(node, Kind.RESULT), start)


def launch_bare(broker: Broker, account: str, model: Path) -> tuple[Launched, int]:
    """The baseline process publishing as node ``account``: (launched, its memory in kB)."""
    topic = node_topic(account, Kind.RESULT)
    args = [str(model / "model.onnx"), broker.host, str(broker.port), account]
    args += [broker.users[account], topic]

    def start() -> Launched:
        proc = subprocess.Popen(
            [sys.executable, "-c", _BARE, *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

        def stop() -> None:
            if proc.stdin is not None:
                proc.stdin.close()
            proc.wait(10)
            if proc.stdout is not None:
                proc.stdout.close()

        return Launched(proc.pid, stop, popen=proc)

    launched = _first_message(broker, topic, start)
    assert launched.popen is not None and launched.popen.stdout is not None
    return launched, int(launched.popen.stdout.readline())


def median(values: list[float]) -> float:
    """The median, for figures taken in rounds on a shared machine."""
    return float(statistics.median(values))
