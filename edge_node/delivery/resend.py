"""When to send unconfirmed outbox messages again (pure; time comes in as an argument).

The hub confirms what it durably applied with receipts; the broker's PUBACK only frees room.
A message the broker acknowledged can still be lost on the way (a broker crash before it saved,
a hub session the broker forgot), so when the oldest message in the outbox, already handed to
the client, stays unconfirmed for ``base_s`` the node hands everything unconfirmed over again
(the hub drops what it already has and confirms it). Each round without progress doubles the
wait, up to ``max_s``, so a hub that is away for long is not flooded with copies.
"""

from __future__ import annotations


class ResendClock:
    """Watches the head of the outbox; says when to go back and send it all again."""

    def __init__(self, base_s: float = 10.0, max_s: float = 300.0) -> None:
        if not 0 < base_s <= max_s:
            raise ValueError(f"need 0 < resend_s <= resend_max_s, got {base_s}, {max_s}")
        self.base_s = base_s
        self.max_s = max_s
        self.wait_s = base_s
        self.rounds = 0
        self._head: int | None = None
        self._since = 0.0

    @property
    def waited(self) -> float:
        """How long the last round waited before it was due."""
        return self.wait_s / 2 if self.rounds else self.wait_s

    def due(self, oldest_id: int | None, last_handed: int, now: float) -> bool:
        """True when the oldest message (``oldest_id``; handed if ``<= last_handed``) has
        waited for its receipt past the current wait; the caller then sends again."""
        if oldest_id is None or oldest_id > last_handed:
            # Nothing handed waits for a receipt: the clock starts with the next handover.
            self._head, self._since, self.wait_s = None, now, self.base_s
            return False
        if oldest_id != self._head:
            if self._head is not None:
                self.wait_s = self.base_s  # the head moved: receipts are flowing
            self._head, self._since = oldest_id, now
            return False
        if now - self._since < self.wait_s:
            return False
        self._since = now
        self.wait_s = min(self.wait_s * 2, self.max_s)
        self.rounds += 1
        return True
