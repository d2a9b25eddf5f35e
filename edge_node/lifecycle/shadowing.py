"""The node's shadow run from command to final report (main thread, no I/O of its own).

:class:`~edge_node.lifecycle.control.Control` fetches and loads the candidate like a deploy
(the same transfer, checks and worker); this class takes the loaded candidate, puts the run
beside the active model in the pipeline, sends its report every ``report_s`` and a final one
when it ends (``done``, ``stopped``, ``over_budget``, ``failed``), and takes it out again. At
most one run at a time: a new shadow command ends the running one first.
"""

from __future__ import annotations

import logging
import time

from edge_node.delivery.outgoing import Outgoing, Sequencer
from edge_node.scoring.pipeline import Pipeline, Scorer
from edge_node.scoring.shadow import Candidate, RunSpec, ShadowRun, State
from schemas.messages import ArmFigures, ModelRef, Shadow, ShadowReport
from schemas.topics import Kind

log = logging.getLogger(__name__)


class Shadowing:
    """The pending or running shadow run of one node."""

    def __init__(self, seq: Sequencer, pipeline: Pipeline, report_s: float) -> None:
        if not report_s > 0:
            raise ValueError(f"report_s must be > 0, got {report_s}")
        self._seq = seq
        self._pipeline = pipeline
        self._report_s = report_s
        self.pending: Shadow | None = None  # its candidate is being fetched or loaded
        self.run: ShadowRun | None = None

    @property
    def busy(self) -> str:
        """``"shadow <id>"`` while a run is pending or running, else ""."""
        if self.pending is not None:
            return f"shadow {self.pending.id}"
        return f"shadow {self.run.spec.command}" if self.run is not None else ""

    @property
    def candidate(self) -> ModelRef | None:
        """The model being shadowed or about to be."""
        if self.pending is not None:
            return ModelRef(self.pending.manifest.name, self.pending.manifest.version)
        return self.run.shadow.model if self.run is not None else None

    def begin(self, command: Shadow) -> None:
        """``command`` was accepted: its candidate is on its way."""
        self.pending = command

    def start(self, command: str, scorer: Scorer, now: float, wall: float) -> str:
        """The candidate of ``command`` has loaded: run it. Returns why not ("" when it runs)."""
        pending = self.pending
        if pending is None or pending.id != command:
            return "the shadow run was stopped or replaced while its candidate loaded"
        self.pending = None
        try:
            candidate = Candidate(scorer, self._pipeline.source_channels)
        except ValueError as exc:
            return str(exc)
        spec = RunSpec(pending.id, pending.duration_s, pending.cpu_budget, self._report_s)
        self.run = ShadowRun(
            spec, candidate, self._pipeline.scorer, now=now, wall=wall, cpu_clock=time.thread_time
        )
        self._pipeline.shadow = self.run
        log.info(
            "shadow %s: %s beside %s for %g s (CPU budget %.0f %%)",
            pending.id,
            scorer.ref,
            self._pipeline.scorer.ref,
            pending.duration_s,
            pending.cpu_budget * 100,
        )
        return ""

    def fail(
        self, command: Shadow, reason: str, wall: float, state: State = "failed"
    ) -> list[Outgoing]:
        """``command`` ended before its run started: a final report without readings."""
        if self.pending is command:
            self.pending = None
        active = self._pipeline.scorer
        manifest = command.manifest
        empty = ArmFigures(
            model=ModelRef(manifest.name, manifest.version),
            threshold=manifest.threshold,
            readings=0,
            flagged=0,
        )
        report = ShadowReport(
            **self._seq.take(wall),
            command=command.id,
            state=state,
            reason=reason,
            start=wall,
            end=wall,
            active=ArmFigures(
                model=active.ref, threshold=active.manifest.threshold, readings=0, flagged=0
            ),
            candidate=empty,
            agreement=float("nan"),
            cpu_share=0.0,
        )
        return [(Kind.SHADOW, report)]

    def end(self, state: State, reason: str, now: float, wall: float) -> list[Outgoing]:
        """End the running run (if any) with ``state``; its final report."""
        run = self.run
        if run is None:
            return []
        run.end(state, reason, now)
        return self._finish(run, now, wall)

    def tick(self, now: float, wall: float) -> list[Outgoing]:
        """The interval report when due; the final one when the run has ended."""
        run = self.run
        if run is None:
            return []
        run.check(now)
        if run.finished:
            return self._finish(run, now, wall)
        if run.due(now):
            return [(Kind.SHADOW, run.report(now=now, **self._seq.take(wall)))]
        return []

    def _finish(self, run: ShadowRun, now: float, wall: float) -> list[Outgoing]:
        self.run = None
        if self._pipeline.shadow is run:
            self._pipeline.shadow = None
        log.info("shadow %s ended: %s %s", run.spec.command, run.state, run.reason)
        return [(Kind.SHADOW, run.report(now=now, **self._seq.take(wall)))]
