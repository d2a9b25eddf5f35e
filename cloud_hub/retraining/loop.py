"""The drift -> retrain loop inside ``serve``: watches drift states, carries out the policy's
steps and records each one (cloud_hub.retraining.store) with its figures.

``tick`` runs on serve's loop thread at most once per ``TICK_S``: it reads the fleet state
under the hub's lock, asks :func:`~cloud_hub.retraining.policy.decide` what to do per node,
and does it. Training and comparing take seconds, so they run on one worker thread; the loop
collects the result on a later tick. Commands go out through a
:class:`~cloud_hub.commands.sender.CommandSender` (signed, in the command ledger).
"""

from __future__ import annotations

import logging
import secrets
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

from cloud_hub.commands.capture_wait import capture_duration_s, sample_rate
from cloud_hub.commands.commander import build_retrain, new_command_id
from cloud_hub.commands.sender import CommandSender, SendError
from cloud_hub.config import RetrainLoopConfig
from cloud_hub.ingest.fleet import FleetState, NodeState
from cloud_hub.models.capture_store import RESULT_FILE, load_capture
from cloud_hub.models.catalog import CatalogError
from cloud_hub.retraining.candidate import CandidateJob, CandidateResult, build_candidate
from cloud_hub.retraining.compare import Counts, Limits
from cloud_hub.retraining.policy import (
    OPEN_STAGES,
    Facts,
    Policy,
    Stage,
    Step,
    Work,
    after_comparison,
    decide,
    drifting_since,
)
from cloud_hub.retraining.promoter import Promoter
from cloud_hub.retraining.store import LoopStore, LoopStoreError
from schemas.messages import Ack

log = logging.getLogger(__name__)

TICK_S: Final = 1.0
ENDED_STAGES: Final = ("promoted", "discarded", "failed")


@dataclass(frozen=True, slots=True)
class LoopCounts:
    """Open runs by stage (as of the last round) and runs ended by outcome since start."""

    open: dict[str, int]
    ended: dict[str, int]


class RetrainLoop:
    """One hub's loop (see the module doc)."""

    def __init__(
        self,
        config: RetrainLoopConfig,
        *,
        store: LoopStore,
        fleet: FleetState,
        lock: AbstractContextManager[object],
        captures_dir: Path,
        models_dir: Path,
        sender: CommandSender,
        promoter: Promoter,
        baselines: dict[str, Counts],
        promoter_acks: Callable[[Ack, float], int] | None = None,
    ) -> None:
        self._config = config
        self._policy = Policy(config.hold_s, config.cooldown_s, config.approval)
        self._limits = Limits(config.max_far_held_back, config.max_far_increase)
        self._store = store
        self._fleet = fleet
        self._lock = lock
        self._captures = captures_dir
        self._models = models_dir
        self._sender = sender
        self.promoter = promoter
        self._since: dict[str, float] = {}
        self._refused: dict[str, str] = {}
        self._training: dict[str, Future[CandidateResult]] = {}
        self._worker = ThreadPoolExecutor(1, thread_name_prefix="retrain")
        self._next_tick = float("-inf")
        self._baselines = baselines
        self._promoter_acks = promoter_acks
        self._promotion_figures: dict[str, dict[str, float]] = {}
        self.internal_errors = 0
        self._open: Counter[str] = Counter()
        self._ended: Counter[str] = Counter()

    def counts(self) -> LoopCounts:
        """What /metrics shows of the loop (every stage and outcome, zeros included)."""
        return LoopCounts(
            open={stage: self._open[stage] for stage in sorted(OPEN_STAGES)},
            ended={stage: self._ended[stage] for stage in ENDED_STAGES},
        )

    def tick(self, now: float) -> None:
        """One round of the loop (a no-op until ``TICK_S`` after the previous round)."""
        if now < self._next_tick:
            return
        self._next_tick = now + TICK_S
        try:
            runs = {w.node: w for w in self._store.open_runs()}
            self._baselines.clear()
            self._baselines.update({n: _start_counts(w) for n, w in runs.items()})
            ended = self._store.last_ended()
            with self._lock:
                facts = {
                    n: self._facts(s, runs.get(n), ended.get(n), now)
                    for n, s in self._candidates(runs)
                }
            for node, fact in facts.items():
                work = runs.get(node)
                self._carry_out(work, decide(work, fact, self._policy, now), node, now)
            self._open = Counter(w.stage for w in self._store.open_runs())  # for /metrics
        except LoopStoreError as exc:
            log.error("retrain loop: %s", exc)
        except Exception:
            # A bug in the loop must not stop serve's ingest; the next round tries again.
            self.internal_errors += 1
            log.exception("retrain loop: internal error")

    def on_ack(self, ack: Ack, now: float) -> int:
        """Note a node refusing a capture; pass the rest to the promoter (an AckConsumer)."""
        if ack.command_type == "retrain" and ack.status in ("rejected", "failed"):
            self._refused[ack.command] = ack.reason or ack.status
            return 1
        return self._promoter_acks(ack, now) if self._promoter_acks is not None else 0

    def close(self) -> None:
        """Stop the worker (a training in progress finishes; its result is not recorded)."""
        self._worker.shutdown(wait=True, cancel_futures=True)
        self._store.close()

    def _candidates(self, runs: dict[str, Work]) -> Iterator[tuple[str, NodeState]]:
        """Nodes with an open run or a drifting state (the rest only end their spell)."""
        for state in self._fleet.nodes():
            drift = state.drift.state if state.drift is not None else None
            if state.node in runs or (drift is not None and drift.level == "drifting"):
                yield state.node, state
            else:
                self._since.pop(state.node, None)

    def _facts(self, state: NodeState, work: Work | None, ended: float | None, now: float) -> Facts:
        drift = state.drift.state if state.drift is not None else None
        level = drift.level if drift is not None else None
        since = drifting_since(self._since.get(state.node), level, now)
        if since is None:
            self._since.pop(state.node, None)
        else:
            self._since[state.node] = since
        model = (state.model.name, state.model.version) if state.model is not None else None
        promotion, note = None, ""
        if work is not None and work.stage == "promoting":
            status = self.promoter.status(work.promotion, now)
            promotion, note = status.state, status.note
            if status.figures:
                self._promotion_figures[work.id] = status.figures
        command = work.capture_command if work is not None else ""
        return Facts(
            drifting_since=since,
            last_ended_at=ended,
            online=self._fleet.is_online(state, now),
            model=model,
            capture_ready=bool(command) and (self._captures / command / RESULT_FILE).exists(),
            capture_refused=self._refused.get(command, ""),
            promotion=promotion,
            promotion_note=note,
        )

    def _carry_out(self, work: Work | None, step: Step, node: str, now: float) -> None:
        if step.kind == "wait":
            if work is not None and work.stage == "training":
                self._collect(work, now)
            return
        if step.kind == "capture":
            self._capture(node, step, now)
        elif work is None:
            return
        elif step.kind == "train":
            self._train(work, now)
        elif step.kind == "give_up":
            self._move(work, "failed", step.reason, now, note=step.reason)
        elif step.kind == "promote":
            self._promote(work, step, now)
        elif step.kind == "promoted":
            figures = {**work.figures, **self._promotion_figures.pop(work.id, {})}
            self._move(work, "promoted", step.reason, now, figures=figures)
        elif step.kind == "discard":
            figures = {**work.figures, **self._promotion_figures.pop(work.id, {})}
            self._move(work, "discarded", step.reason, now, note=step.reason, figures=figures)

    def _capture(self, node: str, step: Step, now: float) -> None:
        with self._lock:
            state = self._fleet.node(node)
            if state is None or state.model is None:
                return
            model, drift = state.model, state.drift
            rate = sample_rate(state.capabilities)
            counts = Counts(state.readings, state.anomalous)
        c = self._config
        expected = capture_duration_s(c.readings, c.mode, rate)
        work_id = secrets.token_hex(4)
        try:
            command = self._sender.send(
                lambda issue: build_retrain(
                    issue, node, readings=c.readings, mode=c.mode, command_id=new_command_id()
                ),
                now,
                expected + c.command_timeout_s,
                f"retrain loop {work_id}",
            )
        except SendError as exc:
            log.error("retrain loop: %s", exc)
            return
        spell = drift.state if drift is not None else None
        # The hub keeps level and channel per node (the figures are in the node's drift report).
        reason = (spell.reason or f"{spell.level}: {spell.channel}") if spell is not None else ""
        work = Work(
            id=work_id,
            node=node,
            stage="capturing",
            started_at=now,
            updated_at=now,
            drift_reason=reason,
            model=model.name,
            current_version=model.version,
            capture_command=command.id,
            capture_deadline=now + expected + c.command_timeout_s,
            figures={"readings_at_start": counts.readings, "anomalous_at_start": counts.anomalous},
        )
        self._baselines[node] = counts
        detail = f"{step.reason}: {reason}; retrain {command.id} for {c.readings} readings"
        self._store.start(work, detail)
        log.info("retrain loop %s: %s %s", work_id, node, detail)

    def _train(self, work: Work, now: float) -> None:
        try:
            capture = load_capture(self._captures / work.capture_command / RESULT_FILE)
        except (OSError, ValueError, KeyError) as exc:
            self._move(work, "failed", f"capture unreadable: {exc}", now, note=str(exc))
            return
        job = CandidateJob(
            work.id,
            capture,
            work.model,
            work.current_version,
            self._config.held_back,
            self._limits,
        )
        detail = f"capture of {len(capture.values)} readings stored; training a candidate"
        if self._move(work, "training", detail, now):
            self._training[work.id] = self._worker.submit(build_candidate, self._models, job, now)

    def _collect(self, work: Work, now: float) -> None:
        future = self._training.get(work.id)
        if future is None:  # the hub restarted while it trained: start again from the capture
            self._training[work.id] = self._restart(work, now)
            return
        if not future.done():
            return
        del self._training[work.id]
        try:
            result = future.result()
        except (ValueError, CatalogError) as exc:
            self._move(work, "failed", f"no candidate: {exc}", now, note=str(exc))
            return
        except Exception as exc:
            # A bug in training must end this run, not serve.
            log.exception("retrain loop %s: training failed", work.id)
            self._move(work, "failed", f"internal error: {exc!r}", now, note=repr(exc))
            return
        figures = {**work.figures, **result.figures}
        stage = after_comparison(result.registered)
        text = _outcome(work, result)
        self._move(
            work,
            stage,
            text,
            now,
            figures=figures,
            candidate=result.version if result.registered else "",
            note="; ".join(result.reasons),
        )

    def _restart(self, work: Work, now: float) -> Future[CandidateResult]:
        try:
            capture = load_capture(self._captures / work.capture_command / RESULT_FILE)
        except (OSError, ValueError, KeyError) as exc:
            failed: Future[CandidateResult] = Future()
            failed.set_exception(ValueError(f"capture unreadable: {exc}"))
            return failed
        job = CandidateJob(
            work.id, capture, work.model, work.current_version, self._config.held_back, self._limits
        )
        return self._worker.submit(build_candidate, self._models, job, now)

    def _promote(self, work: Work, step: Step, now: float) -> None:
        try:
            handle = self.promoter.promote(work.node, work.model, work.candidate_version, now)
        except (SendError, CatalogError) as exc:
            self._move(work, "failed", f"promotion not started: {exc}", now, note=str(exc))
            return
        moved = replace(work, stage="promoting", updated_at=now, promotion=handle)
        detail = f"{step.reason}; promoting {work.model}@{work.candidate_version}"
        self._store.advance(work.stage, moved, "promoting", detail)

    def _move(
        self,
        work: Work,
        stage: Stage,
        detail: str,
        now: float,
        *,
        note: str | None = None,
        figures: dict[str, float] | None = None,
        candidate: str | None = None,
    ) -> bool:
        moved = replace(
            work,
            stage=stage,
            updated_at=now,
            note=work.note if note is None else note,
            figures=work.figures if figures is None else figures,
            candidate_version=work.candidate_version if candidate is None else candidate,
        )
        done = self._store.advance(work.stage, moved, stage, detail)
        if done:
            log.info("retrain loop %s: %s %s: %s", work.id, work.node, stage, detail)
            if stage in ENDED_STAGES:
                self._ended[stage] += 1
        return done


def _start_counts(work: Work) -> Counts:
    """The node's counters when the run started (the flag rate "before" runs from there)."""
    figures = work.figures
    return Counts(
        int(figures.get("readings_at_start", 0)), int(figures.get("anomalous_at_start", 0))
    )


def _outcome(work: Work, result: CandidateResult) -> str:
    """The comparison step's line: both models' FAR, then kept or why not."""
    c = result.comparison
    if not result.version:
        return f"no candidate: {'; '.join(result.reasons)}"
    text = (
        f"candidate {work.model}@{result.version}: FAR on held back "
        f"{c.current_held_back:.2%} -> {c.candidate_held_back:.2%}, on reference "
        f"{c.current_reference:.2%} -> {c.candidate_reference:.2%}"
    )
    if result.registered:
        return f"{text}; registered, awaiting approval"
    return f"{text}; discarded: {'; '.join(result.reasons)}"
