"""Commands sent by ``serve`` itself (the retrain loop): signed, recorded, then published.

The same steps as a CLI command (cloud_hub.cli.session), on serve's own transport and
identity: build with :mod:`cloud_hub.commands.commander`, sign with the hub's key when one is
configured, record in the ledger, hand to the MQTT client without waiting for the broker.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from cloud_hub.commands import keys
from cloud_hub.commands.commander import Issue
from cloud_hub.commands.identity import HubIdentity
from cloud_hub.commands.ledger import CommandRecord, LedgerError, record_of
from schemas.codec import encode
from schemas.messages import Command
from schemas.topics import Kind, node_topic


class SendError(RuntimeError):
    """The command could not be handed to the MQTT client; the message says why."""


class Publisher(Protocol):
    """Serve's transport as the sender sees it (:meth:`HubTransport.offer`)."""

    def offer(self, topic: str, payload: bytes) -> Literal["queued", "full", "refused"]: ...


class CommandLedger(Protocol):
    """Where issued commands are recorded (the command ledger)."""

    def record_command(self, record: CommandRecord) -> None: ...


class CommandSender:
    """Builds, signs, records and publishes commands on behalf of ``issued_by``."""

    def __init__(
        self,
        publisher: Publisher,
        identity: HubIdentity,
        ledger: CommandLedger,
        signing_key: Ed25519PrivateKey | None,
        issued_by: str,
    ) -> None:
        self._publisher = publisher
        self._identity = identity
        self._ledger = ledger
        self._key = signing_key
        self.issued_by = issued_by

    def send(
        self, build: Callable[[Issue], Command], now: float, expires_in: float, why: str
    ) -> Command:
        """Build the command at ``now``, sign, record (``why`` joins ``issued_by``), publish."""
        command = build(Issue(self._identity, now, expires_in))
        if self._key is not None:
            command = keys.sign_command(command, self._key)
        try:
            self._ledger.record_command(record_of(command, f"{self.issued_by}: {why}"))
        except LedgerError as exc:
            # Nothing goes out that the ledger does not show.
            raise SendError(f"{command.node}: {type(command).__name__} not sent: {exc}") from None
        outcome = self._publisher.offer(node_topic(command.node, Kind.CMD), encode(command))
        if outcome != "queued":
            raise SendError(f"{command.node}: {type(command).__name__} not sent: client {outcome}")
        return command
