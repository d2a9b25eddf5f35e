"""Values many nodes have in common, held once for the whole fleet; pure, no I/O.

A hub keeps 10,000 nodes' state: one ModelRef per model version, one channel list, one
capabilities object per distinct announcement, one drift state per (level, channel) and one
float per common value (a model's threshold, sample rates, memory sizes: 24 bytes each) rather
than a copy per node. Every table is bounded (``MAX_SHARED``): beyond it a node keeps its own.
None of these objects is changed in place; a node's new report replaces its reference.
"""

from __future__ import annotations

import sys

import msgspec

from cloud_hub.ingest.drift_state import DriftState
from schemas.messages import Capabilities, ModelRef

MAX_SHARED = 1024


class SharedValues:
    """The fleet's shared copies (see the module)."""

    def __init__(self) -> None:
        self._models: dict[tuple[str, str], ModelRef] = {}
        self._channel_lists: dict[tuple[str, ...], list[str]] = {}
        self._capabilities: dict[tuple[object, ...], Capabilities] = {}
        self._numbers: dict[float, float] = {}
        self._drift_states: dict[tuple[str, str], DriftState] = {}

    def capabilities(self, caps: Capabilities) -> Capabilities:
        """The fleet's one copy of ``caps``: nodes of the same kind announce the same (never
        mutated: a birth replaces a node's capabilities); else ``caps`` with the strings and
        channel list the fleet shares made shared."""
        names = tuple(caps.channels)
        key = (names, *msgspec.structs.astuple(caps)[1:])
        kept = self._capabilities.get(key)
        if kept is not None:
            return kept
        channels = self._channel_lists.get(names)
        if channels is None:
            channels = [sys.intern(c) for c in names]
            if len(self._channel_lists) < MAX_SHARED:
                self._channel_lists[names] = channels
        kept = msgspec.structs.replace(
            caps,
            channels=channels,
            ort_version=sys.intern(caps.ort_version),
            platform=sys.intern(caps.platform),
            group=sys.intern(caps.group),
            sample_hz=self.number(caps.sample_hz),
            memory_mb=self.number(caps.memory_mb),
        )
        if len(self._capabilities) < MAX_SHARED:
            self._capabilities[key] = kept
        return kept

    def number(self, value: float) -> float:
        """The fleet's one float object equal to ``value`` (bounded; NaN is never equal)."""
        kept = self._numbers.get(value)
        if kept is not None:
            return kept
        if len(self._numbers) < MAX_SHARED:
            self._numbers[value] = value
        return value

    def drift_state(self, state: DriftState | None) -> DriftState | None:
        """One DriftState per (level, channel): the hub shows those two (the node's drift
        report has the figures behind them)."""
        if state is None:
            return None
        key = (state.level, state.channel)
        kept = self._drift_states.get(key)
        if kept is None:
            kept = DriftState(state.level, sys.intern(state.channel), "")
            if len(self._drift_states) < MAX_SHARED:
                self._drift_states[key] = kept
        return kept

    def model(self, ref: ModelRef) -> ModelRef:
        """The fleet's one copy of ``ref`` (one per name and version)."""
        kept = self._models.get((ref.name, ref.version))
        if kept is not None:
            return kept
        if len(self._models) < MAX_SHARED:
            self._models[ref.name, ref.version] = ref
        return ref
