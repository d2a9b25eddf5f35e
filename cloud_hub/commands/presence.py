"""Is a node there to take a command? Read from its retained birth or will (pure).

The broker keeps each node's last status message (birth: online; will: offline), so a command
line can tell at once whether a node is known and online, rather than wait out its timeout.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence

from schemas.messages import Status


def absent(nodes: Sequence[str], statuses: Mapping[str, Status]) -> dict[str, str]:
    """The nodes a command would wait for in vain, each with why: unknown or offline."""
    reasons: dict[str, str] = {}
    for node in nodes:
        status = statuses.get(node)
        if status is None:
            reasons[node] = "unknown node: the broker holds no birth from it"
        elif status.state == "offline":
            reasons[node] = f"offline since {_utc(status.ts)}"
    return reasons


def _utc(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(ts))
