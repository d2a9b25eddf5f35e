"""The command book on disk (``<data_dir>/commands.json``): the only code that writes it.

Written whole after every ack, to a temporary file that is fsync'd and renamed over the old
one, so a crash leaves either the old or the new book, never half of one.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from edge_node.lifecycle.commands import BOOK_CAPACITY, CommandBook
from schemas.files import atomic_write

log = logging.getLogger(__name__)


class LedgerError(Exception):
    """The book could not be written; the message names the file."""


class Ledger:
    """Loads the book at start-up and saves it after each change."""

    def __init__(self, path: Path, capacity: int = BOOK_CAPACITY) -> None:
        self.path = path
        self.capacity = capacity

    def load(self) -> CommandBook:
        """The saved book; an empty one if there is none or it is unreadable.

        An unreadable book is moved aside and logged rather than fatal: the node must start,
        and the cost is only that a command repeated right after this start is applied again.
        """
        try:
            data = self.path.read_bytes()
        except FileNotFoundError:
            return CommandBook(self.capacity)
        except OSError as exc:
            log.error("%s: cannot read the command book (%s); starting a new one", self.path, exc)
            return CommandBook(self.capacity)
        try:
            return CommandBook.from_json(data, str(self.path), self.capacity)
        except ValueError as exc:
            aside = self.path.with_name(f"{self.path.name}.bad-{int(time.time())}")
            log.error("%s; moved to %s, starting a new book", exc, aside)
            os.replace(self.path, aside)
            return CommandBook(self.capacity)

    def save(self, book: CommandBook) -> None:
        """Replace the file with ``book``, atomically."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write(self.path, book.to_json())
        except OSError as exc:
            raise LedgerError(f"{self.path}: cannot save the command book: {exc}") from exc
