"""What a rollout is at one moment: its waves, each node's part, its decisions (pure data).

The store (:mod:`cloud_hub.rollouts.store`) saves and loads these; the driver
(:mod:`cloud_hub.rollouts.driver`) moves them on; the CLI prints them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final, Literal

RolloutState = Literal["running", "paused", "done", "stopped", "aborted"]
Phase = Literal["shadow", "observe", "bake", "finished"]
NodeStep = Literal[
    "waiting",  # its wave has not come
    "offline",  # offline when its wave came, or while it was waited for: skipped
    "shadowing",  # running the candidate beside its model
    "sent",
    "accepted",
    "applied",  # switched to the new model
    "failed",  # deploy failed, or the node rolled the new model back on probation
    "rejected",
    "no_answer",  # did not answer its deploy in time
    "rollback_sent",
    "rolled_back",
    "rollback_failed",
]

STATES: Final = ("running", "paused", "done", "stopped", "aborted")
ACTIVE: Final = frozenset({"running", "paused"})
DECISIONS: Final = ("pass", "fail")


@dataclass(slots=True)
class NodeRun:
    """One node's part in a rollout."""

    node: str
    wave: int
    step: NodeStep = "waiting"
    previous: str = ""  # "name@version" it ran before its deploy ("" unknown)
    command: str = ""  # the id of the last command sent to it for this rollout
    switched_at: float | None = None
    reason: str = ""
    # Its figures over a bake time before the switch (Figures.as_dict), kept with the rollout
    # so that a restarted hub still has them.
    before: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    """One decision of the rollout with what it was based on."""

    at: float
    wave: int
    kind: str  # shadow, gate, abort, pause, resume, finish, start
    passed: bool | None
    summary: str
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True)
class Rollout:
    """A rollout of ``model@version`` over ``waves`` of nodes."""

    id: str
    model: str
    version: str
    created_at: float
    created_by: str
    waves: list[list[str]]
    bake_s: float
    shadow_s: float = 0.0
    state: RolloutState = "running"
    phase: Phase = "observe"
    wave: int = 0
    phase_started: float = 0.0
    reason: str = ""
    nodes: dict[str, NodeRun] = field(default_factory=dict)
    # In memory only: when this hub process took the rollout over (figures start then), and
    # the nodes and decisions changed since the last save.
    taken_at: float = 0.0
    dirty: set[str] = field(default_factory=set)
    decisions: list[Decision] = field(default_factory=list)

    @classmethod
    def new(
        cls,
        rollout_id: str,
        model: str,
        version: str,
        waves: list[list[str]],
        *,
        now: float,
        created_by: str,
        bake_s: float,
        shadow_s: float = 0.0,
    ) -> Rollout:
        """A rollout that has not started (``serve`` starts it)."""
        rollout = cls(
            rollout_id,
            model,
            version,
            now,
            created_by,
            waves,
            bake_s,
            shadow_s,
            phase="shadow" if shadow_s > 0 else "observe",
            phase_started=now,
        )
        for index, wave in enumerate(waves):
            for node in wave:
                rollout.nodes[node] = NodeRun(node, index)
        rollout.dirty = set(rollout.nodes)
        return rollout

    @property
    def ref(self) -> str:
        """``name@version`` of the model rolled out."""
        return f"{self.model}@{self.version}"

    def wave_nodes(self, index: int) -> list[NodeRun]:
        """The node runs of wave ``index``."""
        if not 0 <= index < len(self.waves):
            return []
        return [self.nodes[n] for n in self.waves[index]]

    def touch(self, run: NodeRun) -> None:
        """Mark ``run`` changed (saved at the next save)."""
        self.dirty.add(run.node)

    def updated(self) -> int:
        """Nodes running the new model now."""
        return sum(1 for r in self.nodes.values() if r.step == "applied")
