"""Simulated pumps behind the libraries' own servers: a pymodbus Modbus TCP server and an asyncua
OPC UA server, each on its own thread and event loop, on a loopback port.

Values come from :class:`edge_node.sources.simulator.PumpSimulator` (``feed``) or are set by
the test (``set``). ``stop`` and ``start`` again on the same port simulate a device restart.
Run as ``python -m tests.industrial modbus|opcua --port N --rate-hz R [--seed S]`` for a
separate process: the benchmark measures the node's side without the server's CPU, and the demo
and the compose stack read one pump through Modbus from it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import threading
import time
from collections.abc import Coroutine, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from asyncua import Server, ua
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from edge_node.sources.opcua import OpcNode
from edge_node.sources.registers import Register, raw_for
from edge_node.sources.simulator import CHANNELS, PumpSimulator
from tests.broker import free_port

T = TypeVar("T")
UNIT = 1
SIZE = 64  # registers per table; addresses from SIZE on answer "illegal data address"
NAMESPACE = "urn:edgeml:tests:pump"

# The pump's channels as a plant might map them: a mix of types, word orders and scales.
PUMP_REGISTERS = [
    Register("accelerometer1rms", 0, "input", "float32", "big"),
    Register("accelerometer2rms", 2, "input", "float32", "little"),
    Register("current", 4, "holding", "int16", scale=0.001, unit="A"),
    Register("pressure", 5, "holding", "float32", "big", unit="bar"),
    Register("temperature", 7, "holding", "uint16", scale=0.01, unit="degC"),
    Register("thermocouple", 8, "holding", "int32", "little", scale=0.001, unit="degC"),
    Register("voltage", 10, "input", "uint16", scale=0.01, unit="V"),
    Register("volume_flow_raterms", 11, "input", "uint32", scale=0.001, offset=-10.0),
]
PUMP_NODES = [OpcNode(c, f"ns=2;s=Pump.{c}") for c in CHANNELS]


class _LoopThread:
    """An asyncio loop on a daemon thread, for servers the test drives from its own thread."""

    def __init__(self, name: str) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 10.0) -> T:
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5)
        self.loop.close()


class ModbusPump:
    """A Modbus TCP device (pymodbus server) holding ``registers``."""

    def __init__(
        self, registers: Sequence[Register] = PUMP_REGISTERS, port: int = 0, host: str = "127.0.0.1"
    ) -> None:
        self.registers = list(registers)
        self.host = host
        self.port = port or free_port()
        self._loop = _LoopThread("modbus-server")
        self._server: ModbusTcpServer | None = None
        self._last: dict[str, float] = {}

    def start(self) -> None:
        self._loop.call(self._start())
        if self._last:
            self.set(self._last)  # a restarted device comes back with its values

    async def _start(self) -> None:
        def table() -> list[SimData]:
            return [SimData(0, count=SIZE, values=0, datatype=DataType.REGISTERS)]

        def bits() -> list[SimData]:
            return [SimData(0, count=1, values=False, datatype=DataType.BITS)]

        device = SimDevice(id=UNIT, simdata=(bits(), bits(), table(), table()))
        self._server = ModbusTcpServer(device, address=(self.host, self.port))
        await self._server.serve_forever(background=True)

    def stop(self) -> None:
        if self._server is not None:
            self._loop.call(self._server.shutdown())  # type: ignore[no-untyped-call]
            self._server = None

    def set(self, values: dict[str, float]) -> None:
        """Write channel values (scaled as the map says) into the registers."""
        self._last.update(values)
        if self._server is not None:
            self._loop.call(self._write(values))

    async def _write(self, values: dict[str, float]) -> None:
        assert self._server is not None
        for reg in self.registers:
            if reg.channel in values:
                code = 3 if reg.table == "holding" else 4
                words = raw_for(reg, values[reg.channel])
                await self._server.async_setValues(UNIT, code, reg.address, words)

    def close(self) -> None:
        self.stop()
        self._loop.close()


class OpcUaPump:
    """An OPC UA server (asyncua) with one variable per channel under ``ns=2;s=Pump.<channel>``."""

    def __init__(self, channels: Sequence[str] = CHANNELS, port: int = 0) -> None:
        self.channels = list(channels)
        self.port = port or free_port()
        self.url = f"opc.tcp://127.0.0.1:{self.port}/edgeml/"
        self._loop = _LoopThread("opcua-server")
        self._server: Server | None = None
        self._vars: dict[str, Any] = {}
        self.listening = False

    def start(self) -> None:
        """Start the server, or after :meth:`stop` its network side again."""
        if self._server is None:
            self._loop.call(self._start(), timeout=30)
        else:
            self._loop.call(self._server.bserver.start())
        self.listening = True

    async def _start(self) -> None:
        server = Server()
        await server.init()
        server.set_endpoint(self.url)
        server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
        idx = await server.register_namespace(NAMESPACE)
        assert idx == 2, idx  # PUMP_NODES name namespace 2
        pump = await server.nodes.objects.add_object(idx, "Pump")
        for channel in self.channels:
            node = ua.NodeId(f"Pump.{channel}", idx)
            self._vars[channel] = await pump.add_variable(node, channel, 0.0)
        await server.start()
        self._server = server

    def stop(self) -> None:
        """Drop every connection and stop listening: what a client sees of a restart. The
        address space stays (a fresh asyncua server takes seconds to build it)."""
        if self._server is not None and self.listening:
            self._loop.call(self._stop_network(self._server))
            self.listening = False

    @staticmethod
    async def _stop_network(server: Server) -> None:
        # asyncua closes the open connections before the listener: a client reconnecting in
        # between would hold stop() until it times out. Stop accepting first.
        server.bserver._server.close()
        await server.bserver.stop()

    def set(self, values: dict[str, float]) -> None:
        """Write channel values (Good status)."""
        self._loop.call(self._write(values))

    def set_status(self, channel: str, status: int) -> None:
        """Give ``channel`` a status code (e.g. ``ua.StatusCodes.BadSensorFailure``)."""
        value = ua.DataValue(
            ua.Variant(0.0, ua.VariantType.Double),
            StatusCode_=ua.StatusCode(status),
        )
        self._loop.call(self._vars[channel].write_value(value))

    async def _write(self, values: dict[str, float]) -> None:
        for channel, value in values.items():
            await self._vars[channel].write_value(ua.Variant(value, ua.VariantType.Double))

    def close(self) -> None:
        if self._server is not None:
            self.stop()
            self._loop.call(self._server.stop())
            self._server = None
        self._loop.close()


class Feeder:
    """Writes the simulated pump's next reading into a device every period, on a thread."""

    def __init__(self, device: ModbusPump | OpcUaPump, rate_hz: float, seed: int = 0) -> None:
        self._device = device
        self._sim = PumpSimulator(seed=seed, rate_hz=rate_hz, wall_start=0.0)
        self._period = 1.0 / rate_hz
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pump-feeder", daemon=True)
        self.written = 0

    def start(self) -> Feeder:
        self.step()
        self._thread.start()
        return self

    def step(self) -> dict[str, float]:
        """Write the next simulated reading; returns it."""
        row = self._sim.read(1).values[0]
        values = {c: float(v) for c, v in zip(CHANNELS, row, strict=True)}
        self._device.set(values)
        self.written += 1
        return values

    def _run(self) -> None:
        while not self._stop.wait(self._period):
            try:
                self.step()
            except (TimeoutError, RuntimeError) as exc:  # the device is being restarted
                logging.getLogger(__name__).debug("feeder: %s", exc)

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)


def modbus_source_toml(host: str, port: int, rate_hz: float) -> str:
    """The ``[source]`` section of a node reading :data:`PUMP_REGISTERS` from ``host:port``."""
    lines = [
        "[source]",
        'kind = "modbus"',
        f'host = "{host}"',
        f"port = {port}",
        f"unit_id = {UNIT}",
        f"rate_hz = {rate_hz}",
    ]
    for reg in PUMP_REGISTERS:
        lines += [
            "[[source.registers]]",
            f'channel = "{reg.channel}"',
            f"address = {reg.address}",
            f'table = "{reg.table}"',
            f'type = "{reg.dtype}"',
            f'word_order = "{reg.word_order}"',
            f"scale = {reg.scale}",
            f"offset = {reg.offset}",
            f'unit = "{reg.unit}"',
        ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="a simulated pump behind a real server")
    parser.add_argument("kind", choices=["modbus", "opcua"])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--rate-hz", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0, help="the simulated pump's seed")
    parser.add_argument(
        "--host", default="127.0.0.1", help="modbus: address to listen on (a container: 0.0.0.0)"
    )
    args = parser.parse_args()
    device: ModbusPump | OpcUaPump = (
        ModbusPump(port=args.port, host=args.host)
        if args.kind == "modbus"
        else OpcUaPump(port=args.port)
    )
    device.start()
    feeder = Feeder(device, args.rate_hz, seed=args.seed).start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    print("ready", flush=True)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    feeder.stop()
    device.close()
    time.sleep(0.1)


if __name__ == "__main__":
    main()
