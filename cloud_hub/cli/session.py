"""The I/O of one CLI command: its MQTT connection, its ledger lines and its terminal output.

The decisions (which ack moves which node where, when to stop, what to print) are in
:mod:`cloud_hub.commands.commander`; this module only moves messages and text between it and
the world.
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Final, Protocol, TextIO

from cloud_hub.commands import keys
from cloud_hub.commands.commander import Tracker, no_chunks_warning
from cloud_hub.commands.identity import HubIdentity, sender_id
from cloud_hub.commands.ledger import Ledger, LedgerError, record_of
from cloud_hub.config import (
    CONFIG_ENV,
    SYSTEM_CONFIG,
    HubConfig,
    load_hub_config,
    resolve_password,
)
from cloud_hub.ingest.transport import CommandClient, Received
from schemas.codec import DecodeError, decode, encode
from schemas.messages import Ack, Capture, Command, Status
from schemas.settings import Found, find_settings
from schemas.topics import ROOT, Kind, TopicError, node_topic, parse_node_topic

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S: Final = 10.0
POLL_S: Final = 0.1
# Retained messages come at once after a subscription; this only bounds the wait for them.
PRESENCE_WAIT_S: Final = 2.0
_MODELS_PREFIX: Final = f"{ROOT}/models/"


def load_config(path: Path | None) -> HubConfig:
    """The hub's settings: ``--config`` (else ``$CLOUD_HUB_CONFIG``, else /etc/edgeml/hub.toml
    if it exists) plus ``CLOUD_HUB__*`` environment overrides."""
    found = settings_source(path)
    log.info("settings: %s", found.how)
    return load_hub_config(found.path, os.environ)


def settings_source(path: Path | None) -> Found:
    """Which settings file a command reads, and how it was found."""
    return find_settings(path, os.environ, CONFIG_ENV, SYSTEM_CONFIG)


class ProgressLine:
    """Progress on stderr: one line redrawn in place on a terminal, plain lines otherwise.

    A plain stream (a log file, a CI job) gets a line only when the state changes, and for
    chunk counts at most one per ``interval``, so a large deploy does not flood it.
    """

    def __init__(self, stream: TextIO, tty: bool, interval: float = 2.0) -> None:
        self._stream = stream
        self._tty = tty
        self._interval = interval
        self._text = ""
        self._at = float("-inf")
        self._open = False

    def show(self, text: str, elapsed: float, force: bool = False) -> None:
        """Show ``text`` at ``elapsed`` seconds into the command."""
        line = f"[{elapsed:5.1f} s] {text}"
        if self._tty:
            if text != self._text or elapsed - self._at >= 0.1:
                self._write(f"\r{line}\x1b[K")
                self._open = True
        elif text != self._text and (force or elapsed - self._at >= self._interval):
            self._write(line + "\n")
        else:
            return
        self._text, self._at = text, elapsed

    def note(self, text: str) -> None:
        """A line of its own (a warning), kept above the progress line."""
        self.close()
        self._write(text + "\n")
        self._text = ""

    def close(self) -> None:
        """End the in-place line so that what follows starts on a line of its own."""
        if self._open:
            self._write("\n")
            self._open = False

    def _write(self, text: str) -> None:
        self._stream.write(text)
        self._stream.flush()


class CommandPort(Protocol):
    """The broker as a CLI command sees it (:class:`~cloud_hub.ingest.transport.CommandClient`)."""

    client_id: str

    def connect(self, timeout: float) -> None: ...

    def subscribe(self, topics: list[tuple[str, int]], timeout: float) -> None: ...

    def publish(self, topic: str, payload: bytes, timeout: float) -> None: ...

    def receive(self, timeout: float) -> Received | None: ...

    def close(self) -> None: ...


class Session:
    """One CLI command's connection to the broker and to the ledger."""

    def __init__(
        self,
        config: HubConfig,
        subcommand: str,
        *,
        client: CommandPort | None = None,
        clock: Callable[[], float] = time.time,
        out: TextIO | None = None,
        err: TextIO | None = None,
    ) -> None:
        if client is None:
            client_id = f"{config.mqtt.client_id}-cli-{secrets.token_hex(4)}"
            client = CommandClient(config.mqtt, resolve_password(config.mqtt), client_id)
        self.client = client
        key = config.security.signing_key
        self.signing_key = keys.load(Path(key)) if key else None
        self.identity = HubIdentity(sender_id(client.client_id))
        self.issued_by = f"cloud-hub {subcommand} ({_user()})"
        self.clock = clock
        self.out = out or sys.stdout
        err = err or sys.stderr
        self.progress = ProgressLine(err, err.isatty())
        self.ledger = Ledger(config.store.ledger_path())
        self.on_capture: Callable[[Capture, float], None] | None = None

    def __enter__(self) -> Session:
        try:
            self.client.connect(CONNECT_TIMEOUT_S)
        except BaseException:
            self.client.close()
            self.ledger.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.progress.close()
        self.client.close()
        self.ledger.close()

    def listen(
        self, nodes: Sequence[str], kinds: Sequence[Kind], extra: Sequence[str] = ()
    ) -> None:
        """Subscribe to ``kinds`` of each node (QoS 1) and to ``extra`` topics (QoS 0)."""
        topics = [(node_topic(n, k), 1) for n in nodes for k in kinds] + [(t, 0) for t in extra]
        self.client.subscribe(topics, CONNECT_TIMEOUT_S)

    def statuses(self, nodes: Sequence[str], wait_s: float = PRESENCE_WAIT_S) -> dict[str, Status]:
        """Each node's retained status (birth or will), as the broker holds it now."""
        self.client.subscribe([(node_topic(n, Kind.STATUS), 1) for n in nodes], CONNECT_TIMEOUT_S)
        found: dict[str, Status] = {}
        deadline = self.clock() + wait_s
        while len(found) < len(set(nodes)) and self.clock() < deadline:
            message = self.client.receive(POLL_S)
            if message is None:
                continue
            try:
                topic = parse_node_topic(message.topic)
                if topic.kind is Kind.STATUS:
                    found[topic.node] = decode(Kind.STATUS.value, message.payload, message.topic)
            except (TopicError, DecodeError) as exc:
                log.warning("ignoring a message on %s: %s", message.topic[:200], exc)
        return found

    def send(self, commands: Sequence[Command]) -> None:
        """Record each command in the ledger, then publish it on its node's cmd topic."""
        for unsigned in commands:
            command = self._signed(unsigned)
            self.ledger.record_command(record_of(command, self.issued_by))
            self.client.publish(node_topic(command.node, Kind.CMD), encode(command), 10.0)

    def _signed(self, command: Command) -> Command:
        """Signed with the hub's key when one is configured (security.signing_key)."""
        if self.signing_key is None:
            return command
        return keys.sign_command(command, self.signing_key)

    def follow(
        self,
        tracker: Tracker,
        until: Callable[[float], bool] | None = None,
        describe: Callable[[], str] | None = None,
    ) -> None:
        """Feed received messages to ``tracker`` until ``until`` (default: tracker.done) holds."""
        stop = until or tracker.done
        text = describe or tracker.progress
        warned = False
        try:
            while not stop(now := self.clock()):
                message = self.client.receive(POLL_S)
                now = self.clock()
                changed = message is not None and self._dispatch(message, tracker, now)
                if not warned and tracker.chunks_missing(now):
                    self.progress.note(f"warning: {no_chunks_warning()}")
                    warned = True
                self.progress.show(text(), now - tracker.started, force=changed)
        except KeyboardInterrupt:
            self.progress.note("interrupted: not waiting any longer")
        self.progress.close()
        tracker.finish()

    def print_report(self, lines: Sequence[str]) -> None:
        """The outcome, one line per node, on stdout."""
        for line in lines:
            print(line, file=self.out)
        self.out.flush()

    def _dispatch(self, message: Received, tracker: Tracker, now: float) -> bool:
        if message.topic.startswith(_MODELS_PREFIX):
            index = message.topic.rsplit("/", 1)[-1]
            if index.isdigit():
                tracker.on_chunk(int(index))
            return False
        try:
            kind = parse_node_topic(message.topic).kind
            if kind is Kind.ACK:
                ack: Ack = decode(kind.value, message.payload, message.topic)
                self._record(ack, now)
                return tracker.on_ack(ack, now) is not None
            if kind is Kind.CAPTURE and self.on_capture is not None:
                self.on_capture(decode(kind.value, message.payload, message.topic), now)
        except (TopicError, DecodeError) as exc:
            log.warning("ignoring a message on %s: %s", message.topic[:200], exc)
        return False

    def _record(self, ack: Ack, now: float) -> None:
        try:
            self.ledger.record_ack(ack, now)
        except LedgerError as exc:
            log.warning("%s", exc)


def _user() -> str:
    return f"{os.environ.get('USER') or os.environ.get('USERNAME') or 'unknown'}@{_host()}"


def _host() -> str:
    try:
        return socket.gethostname()
    except OSError:
        return "unknown-host"
