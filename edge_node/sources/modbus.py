"""Modbus TCP device reader (the only pymodbus import): a register map read as channels.

Each reading sends one request per contiguous run of mapped registers
(:func:`edge_node.sources.registers.plan_reads`). An exception response costs only the channels
of its request; a lost connection, a timeout or a garbled answer closes the connection and the
poller reconnects with backoff.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence

import numpy as np
from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ModbusException
from pymodbus.pdu import ModbusPDU

from edge_node.sources.polling import ReadError, Reading
from edge_node.sources.registers import Register, Span, plan_reads, scaled

# pymodbus logs every failed connect and lost request at ERROR; the poller already reports
# them, rate-limited and with what they mean for the readings, so keep only its criticals.
logging.getLogger("pymodbus").setLevel(logging.CRITICAL)

# Exception codes of the Modbus application protocol (section 7), for log lines.
EXCEPTION_NAMES = {
    1: "illegal function",
    2: "illegal data address",
    3: "illegal data value",
    4: "server device failure",
    6: "server device busy",
    10: "gateway path unavailable",
    11: "gateway target device failed to respond",
}


class ModbusReader:
    """Reads ``registers`` from Modbus TCP unit ``unit_id`` at ``host:port``."""

    def __init__(
        self,
        host: str,
        port: int,
        unit_id: int,
        registers: Sequence[Register],
        *,
        timeout: float,
    ) -> None:
        self._registers = list(registers)
        self._spans = plan_reads(self._registers)
        self._unit = unit_id
        self._name = f"modbus {host}:{port} unit {unit_id}"
        # retries=0: a reading is due every period anyway; a retry would only make it late.
        self._client = ModbusTcpClient(host, port=port, timeout=timeout, retries=0)

    @property
    def channels(self) -> list[str]:
        """Channel names in map order."""
        return [r.channel for r in self._registers]

    @property
    def name(self) -> str:
        """Host, port and unit, for log lines."""
        return self._name

    @property
    def requests(self) -> int:
        """Read requests per reading."""
        return len(self._spans)

    def connect(self) -> None:
        """Open the TCP connection (bounded by the timeout); ReadError if it fails."""
        try:
            ok = self._client.connect()  # type: ignore[no-untyped-call]
        except (ModbusException, OSError) as exc:
            raise ReadError(str(exc)) from None
        if not ok:
            raise ReadError("connection refused or timed out")

    def read(self) -> Reading:
        """Every mapped register once; an exception response makes its channels NaN."""
        values = np.full(len(self._registers), np.nan)
        reasons = [""] * len(self._registers)
        details = [""] * len(self._registers)
        for span in self._spans:
            response = self._request(span)
            if response.isError():
                code = response.exception_code
                why = f"exception response {code} ({EXCEPTION_NAMES.get(code, 'unknown')})"
                for i in span.members:
                    reasons[i], details[i] = "exception", why
                continue
            words = list(response.registers)
            if len(words) < span.count:
                raise ReadError(f"asked {span.count} registers at {span.start}, got {len(words)}")
            for i in span.members:
                reg = self._registers[i]
                first = reg.address - span.start
                values[i] = scaled(reg, words[first : first + reg.words])
                if math.isnan(values[i]):
                    reasons[i], details[i] = "nonfinite", "the device holds a NaN or infinity"
        return Reading(values, reasons, details)

    def _request(self, span: Span) -> ModbusPDU:
        read = (
            self._client.read_holding_registers
            if span.table == "holding"
            else self._client.read_input_registers
        )
        try:
            return read(span.start, count=span.count, device_id=self._unit)
        except (ModbusException, OSError) as exc:
            raise ReadError(f"{span.table} registers {span.start}..: {exc}") from None

    def close(self) -> None:
        """Close the socket (a later connect opens a new one)."""
        self._client.close()  # type: ignore[no-untyped-call]
