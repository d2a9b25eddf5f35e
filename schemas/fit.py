"""Does a model fit a node? One pure check, in the contract so hub and node say the same words.

A model states what it needs (``Needs``, in its manifest); a node announces what it has
(``Capabilities`` in its birth message). :func:`check` lists every reason the model does not
fit, never only the first, in a fixed order; the hub prints ``FIT`` or ``CHECK memory,power``
and refuses a deploy with those words, and the node refuses the same deploy with the same words.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, Protocol

import msgspec

Reason = Literal["memory", "power", "offline", "hub", "opset", "channels"]
REASONS: tuple[Reason, ...] = ("memory", "power", "offline", "hub", "opset", "channels")


class Needs(msgspec.Struct, kw_only=True, frozen=True):
    """What a model needs of the node that runs it.

    ``memory_mb`` and ``power_w`` are what running it adds (measured when it was built);
    ``offline``: it must keep working with the hub unreachable (every edgeml model does, as the
    node scores and queues offline); ``hub``: it needs the hub while it runs.
    """

    memory_mb: float
    power_w: float
    offline: bool = True
    hub: bool = False
    opset: int = 0
    channels: list[str] = []


class Device(Protocol):
    """The node facts the check reads (schemas.messages.Capabilities has them)."""

    @property
    def channels(self) -> list[str]: ...

    @property
    def memory_mb(self) -> float: ...

    @property
    def memory_available_mb(self) -> float | None: ...

    @property
    def power_budget_w(self) -> float | None: ...

    @property
    def offline_capable(self) -> bool: ...

    @property
    def must_run_offline(self) -> bool: ...

    @property
    def onnx_opset(self) -> int: ...


def check(device: Device, needs: Sequence[Needs]) -> list[Reason]:
    """Every reason the models ``needs`` (run together: memory and power add up) do not fit."""
    memory = sum(n.memory_mb for n in needs)
    power = sum(n.power_w for n in needs)
    failing = {
        "memory": memory > room_mb(device),
        "power": device.power_budget_w is not None and power > device.power_budget_w,
        "offline": any(n.offline for n in needs) and not device.offline_capable,
        "hub": any(n.hub for n in needs) and device.must_run_offline,
        "opset": max((n.opset for n in needs), default=0) > device.onnx_opset,
        "channels": any(c not in device.channels for n in needs for c in n.channels),
    }
    return [reason for reason in REASONS if failing[reason]]


def room_mb(device: Device) -> float:
    """Memory a model may take: what is available when the node says, else its total."""
    available = device.memory_available_mb
    return available if available is not None else device.memory_mb


def verdict(reasons: Sequence[Reason]) -> str:
    """``FIT``, or ``CHECK`` and the reasons: ``CHECK memory,power``."""
    return "FIT" if not reasons else "CHECK " + ",".join(reasons)
