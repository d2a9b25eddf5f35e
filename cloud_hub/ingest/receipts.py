"""End-to-end receipts: which streams to confirm to their nodes, and when; pure, no I/O.

After each commit of its state the hub knows which streams (node, boot) it received messages
of, new or repeated; each gets a receipt naming the ranges of seqs it holds, so the node can
delete them from its outbox. Receipts are cumulative, so a lost or late one costs nothing but
time, and they are coalesced: at most one per stream every ``interval_s`` (the hub's
``ingest.receipt_interval_s``, 5 s by default), carrying the newest ranges, however many
messages arrived in between.
"""

from __future__ import annotations

import heapq
import itertools
import math

from schemas.messages import Range, Receipt

StreamKey = tuple[str, str]


class ReceiptPacer:
    """Holds the ranges to confirm per stream until that stream's next receipt may go.

    Streams wait in a heap by the time they may go, so a round of the hub's loop looks only at
    the streams that are ready: with 10,000 streams, most of them sent a receipt within the
    interval, a scan of them all at each round was a tenth of the hub's CPU."""

    def __init__(self, interval_s: float) -> None:
        self.interval_s = interval_s
        self._due: dict[StreamKey, list[Range]] = {}
        self._ready_at: dict[StreamKey, float] = {}
        self._heap: list[tuple[float, int, StreamKey]] = []
        self._order = itertools.count()
        self._sent_at: dict[StreamKey, float] = {}
        self._prune_at = -math.inf
        self.sent = 0

    def offer(self, due: dict[StreamKey, list[Range]]) -> None:
        """Streams just committed, with their ranges (newer ranges replace older ones)."""
        for key, ranges in due.items():
            if key not in self._due:
                self._queue(key, self._sent_at.get(key, -math.inf) + self.interval_s)
            self._due[key] = ranges

    @property
    def pending(self) -> int:
        """Streams waiting for their receipt."""
        return len(self._due)

    def take(self, now: float, limit: int | None = None) -> list[tuple[StreamKey, list[Range]]]:
        """The receipts that may go at ``now`` (at most ``limit``, the longest ready first); the
        others wait for their interval or the next call."""
        ready: list[tuple[StreamKey, list[Range]]] = []
        heap = self._heap
        while heap and heap[0][0] <= now and (limit is None or len(ready) < limit):
            at, _, key = heapq.heappop(heap)
            if self._ready_at.get(key) != at:
                continue  # an entry replaced by a newer one (given back)
            del self._ready_at[key]
            ready.append((key, self._due.pop(key)))
            self._sent_at[key] = now
        if now >= self._prune_at:
            # Forget send times that no longer hold anything back, once an interval.
            self._sent_at = {k: t for k, t in self._sent_at.items() if now - t < self.interval_s}
            self._prune_at = now + self.interval_s
        self.sent += len(ready)
        return ready

    def give_back(self, key: StreamKey, ranges: list[Range]) -> None:
        """A receipt the transport could not take now: send it at the next chance."""
        self._due.setdefault(key, ranges)
        self._sent_at.pop(key, None)
        self._queue(key, -math.inf)
        self.sent -= 1

    def _queue(self, key: StreamKey, at: float) -> None:
        self._ready_at[key] = at
        heapq.heappush(self._heap, (at, next(self._order), key))


def receipt(key: StreamKey, ranges: list[Range], sender_boot: str, seq: int, now: float) -> Receipt:
    """The receipt message for one stream (``node`` is the node it confirms)."""
    node, boot = key
    return Receipt(node=node, boot=sender_boot, seq=seq, ts=now, of_boot=boot, ranges=ranges)
