"""Who a hub process is on the wire: the envelope fields of what it publishes (pure)."""

from __future__ import annotations

import re
import secrets
from typing import Final

_NOT_ID: Final = re.compile(r"[^A-Za-z0-9_.-]")


def new_boot() -> str:
    """A random boot id for this process start."""
    return secrets.token_hex(4)


def sender_id(client_id: str) -> str:
    """``client_id`` made a valid envelope ``node`` (nodes reject a chunk whose sender is not)."""
    cleaned = _NOT_ID.sub("_", client_id)[:64]
    return cleaned if cleaned not in ("", ".", "..") else "hub"


class HubIdentity:
    """The envelope of one hub process: sender name, boot id and a seq per message."""

    def __init__(self, sender: str, boot: str | None = None) -> None:
        self.sender = sender
        self.boot = boot if boot is not None else new_boot()
        self._seq = 0

    def next_seq(self) -> int:
        """The seq of the next message (0, 1, 2, ...)."""
        seq = self._seq
        self._seq += 1
        return seq
