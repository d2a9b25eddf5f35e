"""Which commands the node believes: signed by a trusted hub key, and not replayed.

:func:`check` is pure: the signature of the command (and of a deploy's manifest) against the
trusted keys, then the command's ``issued_at`` against the newest one accepted from the same
key. A command issued more than ``REORDER_S`` before that mark is a replay: an old signed
command sent again after newer ones superseded it (its id may have left the command book).
The marks are kept on disk by :class:`Marks` (``<data_dir>/trust.json``), so a restart does
not reopen the door. Expiry is checked with every command in :mod:`.commands`.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

import msgspec

from schemas.files import atomic_write
from schemas.messages import Command, Deploy, Shadow
from schemas.signing import PublicKey, SignatureError, verify

log = logging.getLogger(__name__)

# Commands from one key may arrive this much out of order (two CLI commands at once).
REORDER_S: Final = 5.0


@dataclass(frozen=True)
class Accepted:
    """Who signed a command, and when it says it was issued."""

    key_id: str
    issued_at: float


def check(
    command: Command,
    keys: list[PublicKey],
    marks: dict[str, float],
    now: float,
    reorder_s: float = REORDER_S,
) -> Accepted | None:
    """The signer of ``command``; SignatureError with the reason the node gives in its ack.

    None for an expired command: it is signed, and the usual checks reject it as expired
    (the truer reason), without moving the replay mark.
    """
    signer = verify(command, keys)
    if isinstance(command, Deploy | Shadow):  # a shadow's candidate is checked like a deploy's
        verify(command.manifest, keys)
    if command.expires_at < now:
        return None
    last = marks.get(signer.key_id)
    if last is not None and command.issued_at < last - reorder_s:
        raise SignatureError(
            f"replayed: issued at {_utc(command.issued_at)}, before the newest command "
            f"accepted from hub key {signer.key_id} ({_utc(last)})"
        )
    return Accepted(signer.key_id, command.issued_at)


class Marks:
    """The newest ``issued_at`` accepted per hub key, on disk; the only writer of its file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.marks: dict[str, float] = self._load()

    def accept(self, accepted: Accepted) -> None:
        """Raise the key's mark to ``accepted.issued_at`` and save (OSError is the caller's)."""
        if accepted.issued_at <= self.marks.get(accepted.key_id, float("-inf")):
            return
        self.marks[accepted.key_id] = accepted.issued_at
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(self.path, msgspec.json.encode(self.marks))

    def _load(self) -> dict[str, float]:
        try:
            return msgspec.json.decode(self.path.read_bytes(), type=dict[str, float])
        except FileNotFoundError:
            return {}
        except (OSError, msgspec.DecodeError, msgspec.ValidationError) as exc:
            # Failing closed would lock the node out of every command; an empty mark only
            # reopens replays of commands still unexpired, which expiry bounds.
            log.error("%s: unreadable replay marks (%s); starting without them", self.path, exc)
            return {}


def _utc(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


class Trust:
    """The node's trusted hub keys and replay marks: admits or refuses each new command."""

    def __init__(self, keys: list[PublicKey], marks: Marks) -> None:
        self.keys = keys
        self.marks = marks

    def admit(self, command: Command, now: float) -> str:
        """Empty when ``command`` may go on to the usual checks, else why it is refused."""
        try:
            accepted = check(command, self.keys, self.marks.marks, now)
        except SignatureError as exc:
            return str(exc)
        if accepted is None:
            return ""
        try:
            self.marks.accept(accepted)
        except OSError as exc:
            log.error("%s: cannot save the replay marks: %s", self.marks.path, exc)
        return ""
