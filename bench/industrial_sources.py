"""Readings per second and CPU cost of the Modbus TCP and OPC UA sources, against the pump
simulator source polled the same way at the same rate (the baseline, measured in the same run).

Each device is a simulated pump behind the library's own server (``tests/industrial.py``) in a
separate process on loopback, so the CPU measured here is the node's side only: the reader
thread, decoding, and the loop draining the buffer every 20 ms as the node's loop does.

    .venv/bin/python bench/industrial_sources.py [--rates 10 100 1000] [--seconds 5]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from edge_node.sources.base import Source  # noqa: E402
from edge_node.sources.modbus import ModbusReader  # noqa: E402
from edge_node.sources.opcua import OpcUaReader  # noqa: E402
from edge_node.sources.polling import Backoff, PolledSource  # noqa: E402
from edge_node.sources.simulator import PumpSimulator  # noqa: E402
from tests.broker import free_port  # noqa: E402
from tests.industrial import PUMP_NODES, PUMP_REGISTERS  # noqa: E402

LOOP_WAIT_S = 0.02  # the node loop's idle wait between polls


@dataclass(frozen=True)
class Run:
    readings: int
    good: int  # readings with every channel read
    seconds: float
    cpu_s: float

    @property
    def per_s(self) -> float:
        return self.readings / self.seconds

    @property
    def good_per_s(self) -> float:
        return self.good / self.seconds

    @property
    def cpu_percent(self) -> float:
        return 100 * self.cpu_s / self.seconds

    @property
    def cpu_us_per_reading(self) -> float:
        return 1e6 * self.cpu_s / max(self.readings, 1)


def measure(source: Source, seconds: float) -> Run:
    """Poll ``source`` like the node's loop for ``seconds``; count readings and CPU time."""
    readings = good = 0
    source.start(time.monotonic(), time.time())
    time.sleep(0.5)  # connect and warm up outside the measurement
    while source.poll(time.monotonic()) is not None:
        pass
    cpu0, t0 = time.process_time(), time.monotonic()
    while (now := time.monotonic()) - t0 < seconds:
        block = source.poll(now)
        if block is None:
            time.sleep(LOOP_WAIT_S)
            continue
        readings += block.n
        good += int((~np.isnan(block.values).any(axis=1)).sum())
    run = Run(readings, good, time.monotonic() - t0, time.process_time() - cpu0)
    source.close()
    return run


def polled(kind: str, port: int, rate: float) -> Source:
    reader = (
        ModbusReader("127.0.0.1", port, 1, PUMP_REGISTERS, timeout=1.0)
        if kind == "modbus"
        else OpcUaReader(f"opc.tcp://127.0.0.1:{port}/edgeml/", PUMP_NODES, timeout=1.0)
    )
    return PolledSource(
        reader, rate_hz=rate, backoff=Backoff(0.5, 5.0), wall_start=time.time(), max_block=256
    )


def serve(kind: str, rate: float) -> tuple[subprocess.Popen[str], int]:
    """A simulated pump device in its own process; returns it once it listens."""
    port = free_port()
    args = [sys.executable, "-m", "tests.industrial", kind, "--port", str(port)]
    proc = subprocess.Popen(
        [*args, "--rate-hz", str(rate)],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    assert proc.stdout is not None
    if proc.stdout.readline().strip() != "ready":
        proc.kill()
        raise RuntimeError(f"the {kind} device did not start")
    return proc, port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[10.0, 100.0, 1000.0])
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    devices = {kind: serve(kind, 10.0) for kind in ("modbus", "opcua")}
    try:
        print(
            f"{'source':<8} {'asked/s':>8} {'readings/s':>11} {'complete/s':>11} "
            f"{'CPU %':>7} {'CPU µs/reading':>15} {'CPU x baseline':>15}"
        )
        for rate in args.rates:
            base = measure(PumpSimulator(seed=0, rate_hz=rate, wall_start=0.0), args.seconds)
            runs = {"sim": base}
            for kind, (_, port) in devices.items():
                runs[kind] = measure(polled(kind, port, rate), args.seconds)
            for name, run in runs.items():
                ratio = run.cpu_s / base.cpu_s if base.cpu_s > 0 else float("inf")
                print(
                    f"{name:<8} {rate:>8.0f} {run.per_s:>11.1f} {run.good_per_s:>11.1f} "
                    f"{run.cpu_percent:>7.2f} {run.cpu_us_per_reading:>15.1f} {ratio:>15.1f}"
                )
    finally:
        for proc, _ in devices.values():
            proc.terminate()
            proc.wait(10)


if __name__ == "__main__":
    main()
