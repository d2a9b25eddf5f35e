"""OPC UA device reader (the only asyncua import): node values read as channels.

Every reading is one Read service call for all nodes. A value whose status is not Good, or that
is not a number, becomes a dropout for that channel only; a failed call, a timeout or a lost
connection closes the session and the poller reconnects with backoff.

asyncua is asynchronous; the reader runs its own event loop on the calling thread (the source's
reader thread), one loop per connection, so nothing of it outlives a closed connection.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from asyncua import Client, ua
from asyncua.common.node import Node

from edge_node.sources.base import SourceError
from edge_node.sources.polling import ReadError, Reading

log = logging.getLogger(__name__)
T = TypeVar("T")

# Our reads every period already notice a dead server; asyncua's own watchdog would only add
# a request per second and log a traceback when it notices first.
_WATCHDOG_S = 3600.0


@dataclass(frozen=True, slots=True)
class OpcNode:
    """One channel: ``value * scale + offset`` in ``unit`` from the node ``node_id``
    (OPC UA string notation, e.g. ``ns=2;s=Pump1.Pressure``)."""

    channel: str
    node_id: str
    scale: float = 1.0
    offset: float = 0.0
    unit: str = ""


def parse_node_ids(nodes: Sequence[OpcNode], key: str = "source.nodes") -> list[ua.NodeId]:
    """The node ids of ``nodes``; SourceError names the first that is not valid notation."""
    ids = []
    for i, node in enumerate(nodes):
        try:
            ids.append(ua.NodeId.from_string(node.node_id))
        except ua.UaError as exc:
            raise SourceError(
                f"key {key}[{i}].node_id: {node.node_id!r} is not an OPC UA node id "
                f"(e.g. 'ns=2;s=Pump1.Pressure' or 'i=2258'): {exc}"
            ) from None
    return ids


def value_of(node: OpcNode, data: ua.DataValue) -> tuple[float, str, str]:
    """(value, reason, detail) of one read result: the scaled value and "" when Good and
    numeric, else NaN with a reason key and a human detail."""
    status = data.StatusCode
    if status is not None and not status.is_good():
        return math.nan, "bad_status", status.name
    raw: Any = data.Value.Value if data.Value is not None else None
    if not isinstance(raw, int | float):  # bool is an int: a running flag reads 1.0 / 0.0
        return math.nan, "not_numeric", f"value {type(raw).__name__} is not a number"
    if not math.isfinite(raw):
        return math.nan, "nonfinite", f"value {raw!r}"
    return float(raw) * node.scale + node.offset, "", ""


async def _cancel_all() -> None:
    """Cancel what asyncua left running on this loop (its watchdog, a half-closed socket)."""
    pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)


class OpcUaReader:
    """Reads ``nodes`` from the OPC UA server at ``url`` (no security, anonymous)."""

    def __init__(self, url: str, nodes: Sequence[OpcNode], *, timeout: float) -> None:
        self._nodes = list(nodes)
        self._ids = parse_node_ids(self._nodes)
        self._url = url
        self._timeout = timeout
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Client | None = None
        self._handles: list[Node] = []

    @property
    def channels(self) -> list[str]:
        """Channel names in map order."""
        return [n.channel for n in self._nodes]

    @property
    def name(self) -> str:
        """The endpoint, for log lines."""
        return f"opcua {self._url}"

    def connect(self) -> None:
        """Open a session (bounded by the timeout); ReadError if it fails."""
        self.close()
        self._loop = asyncio.new_event_loop()
        client = Client(self._url, timeout=self._timeout, watchdog_intervall=_WATCHDOG_S)
        try:
            self._run(client.connect())
        except ReadError:
            client.disconnect_socket()
            self.close()
            raise
        self._client = client
        self._handles = [client.get_node(i) for i in self._ids]

    def read(self) -> Reading:
        """Every node once, in one Read call."""
        if self._client is None:
            raise ReadError("not connected")
        results = self._run(self._client.read_attributes(self._handles))
        if len(results) != len(self._nodes):
            raise ReadError(f"asked {len(self._nodes)} values, got {len(results)}")
        values = np.full(len(self._nodes), np.nan)
        reasons, details = [""] * len(self._nodes), [""] * len(self._nodes)
        for i, (node, data) in enumerate(zip(self._nodes, results, strict=True)):
            values[i], reasons[i], details[i] = value_of(node, data)
        return Reading(values, reasons, details)

    def close(self) -> None:
        """End the session if there is one (bounded), then the connection's event loop."""
        client, self._client, self._handles = self._client, None, []
        if self._loop is None:
            return
        if client is not None:
            try:
                self._run(client.disconnect())
            except ReadError as exc:
                log.debug("%s: no clean disconnect: %s", self.name, exc)
                client.disconnect_socket()
        loop, self._loop = self._loop, None
        loop.run_until_complete(_cancel_all())
        loop.close()

    def _run(self, call: Awaitable[T]) -> T:
        assert self._loop is not None
        try:
            return self._loop.run_until_complete(asyncio.wait_for(call, self._timeout))
        except (TimeoutError, ConnectionError, OSError, ua.UaError) as exc:
            raise ReadError(f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
