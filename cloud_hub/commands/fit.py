"""The fit table: which nodes a model (or two models together) fits, and the cheapest (pure).

The per-node check is schemas.fit's, so the hub refuses a deploy with the words the node would
use. A node that has not announced its capabilities, or a model whose manifest states no needs,
cannot be checked; that is said, not guessed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import msgspec

from schemas.fit import Needs, Reason, check, room_mb, verdict
from schemas.messages import Capabilities


@dataclass(frozen=True)
class NodeFit:
    """One node's verdicts: the model alone, the second model alone, both together."""

    node: str
    alone: str
    other: str | None
    together: str | None
    reasons: tuple[Reason, ...]  # of the deploy being judged (alone, or together with --with)
    price: float | None
    spare_mb: float | None

    @property
    def fits(self) -> bool:
        """Every verdict asked for is FIT."""
        verdicts = [self.alone, self.other, self.together]
        return all(v == "FIT" for v in verdicts if v is not None)


def capabilities_of(raw: Mapping[str, object] | None) -> Capabilities | None:
    """The capabilities a node announced (as the registry keeps them), or None."""
    if raw is None:
        return None
    try:
        return msgspec.convert(raw, Capabilities)
    except msgspec.ValidationError:
        return None


def fit_table(
    nodes: Mapping[str, Capabilities | None], needs: Needs | None, other: Needs | None = None
) -> list[NodeFit]:
    """Each node's verdicts, in node order."""
    return [_node_fit(node, caps, needs, other) for node, caps in sorted(nodes.items())]


def cheapest(table: Sequence[NodeFit]) -> NodeFit | None:
    """The node that fits at the lowest price, then with the most spare memory."""
    fitting = [row for row in table if row.fits]
    if not fitting:
        return None
    return min(
        fitting,
        key=lambda r: (
            r.price if r.price is not None else float("inf"),
            -(r.spare_mb or 0.0),
            r.node,
        ),
    )


def _node_fit(
    node: str, caps: Capabilities | None, needs: Needs | None, other: Needs | None
) -> NodeFit:
    if caps is None:
        unknown = "UNKNOWN (no capabilities announced yet)"
        return NodeFit(node, unknown, None if other is None else unknown, None, (), None, None)
    if needs is None:
        unknown = "UNKNOWN (the model's manifest states no needs)"
        return NodeFit(node, unknown, None, None, (), caps.price, None)
    alone = check(caps, [needs])
    both = check(caps, [needs, other]) if other is not None else alone
    used = needs.memory_mb + (other.memory_mb if other is not None else 0.0)
    return NodeFit(
        node=node,
        alone=verdict(alone),
        other=None if other is None else verdict(check(caps, [other])),
        together=None if other is None else verdict(both),
        reasons=tuple(both),
        price=caps.price,
        spare_mb=room_mb(caps) - used,
    )
