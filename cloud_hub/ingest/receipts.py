"""End-to-end receipts: which streams to confirm to their nodes, and when; pure, no I/O.

After each commit of its state the hub knows which streams (node, boot) it received messages
of, new or repeated; each gets a receipt naming the ranges of seqs it holds, so the node can
delete them from its outbox. Receipts are cumulative, so a lost or late one costs nothing but
time, and they are coalesced: at most one per stream every ``interval_s`` (the hub's
``ingest.receipt_interval_s``, 5 s by default), carrying the newest ranges, however many
messages arrived in between.
"""

from __future__ import annotations

from schemas.messages import Range, Receipt

StreamKey = tuple[str, str]


class ReceiptPacer:
    """Holds the ranges to confirm per stream until that stream's next receipt may go."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._due: dict[StreamKey, list[Range]] = {}
        self._sent_at: dict[StreamKey, float] = {}
        self.sent = 0

    def offer(self, due: dict[StreamKey, list[Range]]) -> None:
        """Streams just committed, with their ranges (newer ranges replace older ones)."""
        self._due.update(due)

    @property
    def pending(self) -> int:
        """Streams waiting for their receipt."""
        return len(self._due)

    def take(self, now: float, limit: int | None = None) -> list[tuple[StreamKey, list[Range]]]:
        """The receipts that may go at ``now`` (at most ``limit``, oldest offers first); the
        others wait for their interval or the next call.

        The limit matters with thousands of nodes: the transport takes a few hundred messages
        at a time, and taking every ready stream only to give most of them back costs a scan
        of all of them each round of the hub's loop."""
        ready = []
        for key, ranges in self._due.items():
            if now - self._sent_at.get(key, -self.interval_s) >= self.interval_s:
                ready.append((key, ranges))
                if limit is not None and len(ready) >= limit:
                    break
        for key, _ in ready:
            del self._due[key]
            self._sent_at[key] = now
        # Forget send times that no longer hold anything back, so the map stays small.
        if len(self._sent_at) > 2 * len(self._due) + 1024:
            self._sent_at = {k: t for k, t in self._sent_at.items() if now - t < self.interval_s}
        self.sent += len(ready)
        return ready

    def give_back(self, key: StreamKey, ranges: list[Range]) -> None:
        """A receipt the transport could not take now: send it at the next chance."""
        self._due.setdefault(key, ranges)
        self._sent_at.pop(key, None)
        self.sent -= 1


def receipt(key: StreamKey, ranges: list[Range], sender_boot: str, seq: int, now: float) -> Receipt:
    """The receipt message for one stream (``node`` is the node it confirms)."""
    node, boot = key
    return Receipt(node=node, boot=sender_boot, seq=seq, ts=now, of_boot=boot, ranges=ranges)
