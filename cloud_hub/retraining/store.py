"""The loop's table: every run (:class:`~cloud_hub.retraining.policy.Work`) and every step it
took with its figures; the only owner of ``retrain.db`` (beside the registry's ``hub.db``).

``serve`` drives runs and the CLI (``approve``, ``reject``) decides on them, so both write.
A stage changes only from the stage the writer saw (compare and set), so a person's decision
and the loop's next step cannot overwrite each other.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import msgspec

from cloud_hub.retraining.policy import OPEN_STAGES, Stage, Work
from cloud_hub.store.sqlite_file import open_wal

FILE_NAME: Final = "retrain.db"
_SCHEMA: Final = (
    """
CREATE TABLE IF NOT EXISTS work (
    id                 TEXT PRIMARY KEY,
    node               TEXT NOT NULL,
    stage              TEXT NOT NULL,
    started_at         REAL NOT NULL,
    updated_at         REAL NOT NULL,
    drift_reason       TEXT NOT NULL,
    model              TEXT NOT NULL,
    current_version    TEXT NOT NULL,
    candidate_version  TEXT NOT NULL,
    capture_command    TEXT NOT NULL,
    capture_deadline   REAL,
    promotion          TEXT NOT NULL,
    note               TEXT NOT NULL,
    figures            TEXT NOT NULL
)
""",
    "CREATE INDEX IF NOT EXISTS work_by_node ON work (node, updated_at)",
    """
CREATE TABLE IF NOT EXISTS steps (
    work     TEXT NOT NULL,
    ts       REAL NOT NULL,
    step     TEXT NOT NULL,
    detail   TEXT NOT NULL,
    figures  TEXT NOT NULL
)
""",
    "CREATE INDEX IF NOT EXISTS steps_by_work ON steps (work, ts)",
)
_COLUMNS: Final = (
    "id, node, stage, started_at, updated_at, drift_reason, model, current_version, "
    "candidate_version, capture_command, capture_deadline, promotion, note, figures"
)


class LoopStoreError(RuntimeError):
    """retrain.db cannot be opened, read or written, or a run is not where it was expected."""


@dataclass(frozen=True, slots=True)
class StepRecord:
    """One line of a run's history."""

    ts: float
    step: str
    detail: str
    figures: dict[str, float]


class LoopStore:
    """Runs of the loop and their steps in one SQLite file."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)
        try:
            self._db = open_wal(self.path, autocommit=True)
            with self._db:
                for statement in _SCHEMA:
                    self._db.execute(statement)
        except (OSError, sqlite3.Error) as exc:
            raise LoopStoreError(f"{self.path}: cannot open the retrain table: {exc}") from None

    def start(self, work: Work, detail: str) -> None:
        """Record a new run and its first step."""
        values = _params(work)
        marks = ", ".join("?" * len(values))
        with self._writing():
            self._db.execute(f"INSERT INTO work ({_COLUMNS}) VALUES ({marks})", values)
            self._add_step(work.id, work.started_at, work.stage, detail, work.figures)

    def advance(self, before: Stage, work: Work, step: str, detail: str) -> bool:
        """Save ``work`` if its stored stage is still ``before``, with a step line; False if
        someone else moved it first."""
        values = _params(work)[1:]
        sets = ", ".join(f"{c.strip()} = ?" for c in _COLUMNS.split(",")[1:])
        with self._writing():
            changed = self._db.execute(
                f"UPDATE work SET {sets} WHERE id = ? AND stage = ?", (*values, work.id, before)
            ).rowcount
            if changed:
                self._add_step(work.id, work.updated_at, step, detail, work.figures)
        return changed == 1

    def note(self, work_id: str, ts: float, step: str, detail: str) -> None:
        """A step line that does not change the run (a command sent, a retry)."""
        with self._writing():
            self._add_step(work_id, ts, step, detail, {})

    def open_runs(self) -> list[Work]:
        """Every run not ended yet."""
        marks = ", ".join("?" * len(OPEN_STAGES))
        return self._select(f"WHERE stage IN ({marks}) ORDER BY started_at", tuple(OPEN_STAGES))

    def runs(self, limit: int = 50) -> list[Work]:
        """The latest ``limit`` runs, newest first."""
        return self._select("ORDER BY started_at DESC LIMIT ?", (limit,))

    def run(self, work_id: str) -> Work | None:
        """The run ``work_id``, or None."""
        rows = self._select("WHERE id = ?", (work_id,))
        return rows[0] if rows else None

    def last_ended(self) -> dict[str, float]:
        """Per node, when its latest ended run ended."""
        marks = ", ".join("?" * len(OPEN_STAGES))
        sql = f"SELECT node, MAX(updated_at) FROM work WHERE stage NOT IN ({marks}) GROUP BY node"
        return {node: float(ts) for node, ts in self._read(sql, tuple(OPEN_STAGES))}

    def steps(self, work_id: str) -> list[StepRecord]:
        """The history of one run, oldest first."""
        sql = "SELECT ts, step, detail, figures FROM steps WHERE work = ? ORDER BY ts, rowid"
        return [
            StepRecord(ts, step, detail, msgspec.json.decode(figures, type=dict[str, float]))
            for ts, step, detail, figures in self._read(sql, (work_id,))
        ]

    def close(self) -> None:
        """Close the connection."""
        self._db.close()

    def _add_step(
        self, work_id: str, ts: float, step: str, detail: str, figures: dict[str, float]
    ) -> None:
        self._db.execute(
            "INSERT INTO steps (work, ts, step, detail, figures) VALUES (?, ?, ?, ?, ?)",
            (work_id, ts, step, detail, msgspec.json.encode(figures).decode()),
        )

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One transaction; an SQLite error becomes a LoopStoreError naming the file."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.Error as exc:
            raise LoopStoreError(f"{self.path}: cannot write the retrain table: {exc}") from None

    def _select(self, where: str, params: tuple[object, ...]) -> list[Work]:
        return [_work(r) for r in self._read(f"SELECT {_COLUMNS} FROM work {where}", params)]

    def _read(self, sql: str, params: tuple[object, ...]) -> list[tuple[Any, ...]]:
        try:
            return self._db.execute(sql, params).fetchall()
        except sqlite3.Error as exc:
            raise LoopStoreError(f"{self.path}: cannot read the retrain table: {exc}") from None


def _params(w: Work) -> tuple[object, ...]:
    deadline = w.capture_deadline if w.capture_deadline != float("inf") else None
    return (
        w.id,
        w.node,
        w.stage,
        w.started_at,
        w.updated_at,
        w.drift_reason,
        w.model,
        w.current_version,
        w.candidate_version,
        w.capture_command,
        deadline,
        w.promotion,
        w.note,
        msgspec.json.encode(w.figures).decode(),
    )


def _work(row: tuple[Any, ...]) -> Work:
    wid, node, stage, started, updated, reason, model, current, candidate, *rest = row
    command, deadline, promotion, note, figures = rest
    return Work(
        id=wid,
        node=node,
        stage=stage,
        started_at=started,
        updated_at=updated,
        drift_reason=reason,
        model=model,
        current_version=current,
        candidate_version=candidate,
        capture_command=command,
        capture_deadline=float("inf") if deadline is None else deadline,
        promotion=promotion,
        note=note,
        figures=msgspec.json.decode(figures, type=dict[str, float]),
    )
