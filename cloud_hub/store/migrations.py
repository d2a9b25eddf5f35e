"""Schema migrations as ordered steps; pure (each backend runs them on its own connection).

A store records every step it has run in a ``schema_version`` table (version, description,
applied at). On open, the backend asks :func:`pending` for the steps after its highest
recorded version and runs each in its own transaction together with its row, so a step is
either wholly applied and recorded or not at all. A store whose version is newer than the
hub knows is refused rather than written (an older hub would write rows a newer one does
not expect).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

VERSION_TABLE: Final = "schema_version"


class MigrationError(RuntimeError):
    """The steps are inconsistent, or the store is newer than this hub."""


@dataclass(frozen=True, slots=True)
class Step:
    """One migration: ``version`` (1, 2, … without holes), what it does, its SQL statements."""

    version: int
    description: str
    statements: tuple[str, ...]


def check_steps(steps: Sequence[Step]) -> None:
    """Versions must run 1, 2, 3, … in order: a hole or a repeat is a bug in the list."""
    versions = [s.version for s in steps]
    if versions != list(range(1, len(steps) + 1)):
        raise MigrationError(f"migration versions must be 1..{len(steps)} in order: {versions}")


def pending(steps: Sequence[Step], current: int, where: str) -> list[Step]:
    """The steps to run on a store at version ``current`` (0: new); refuses a newer store."""
    check_steps(steps)
    latest = len(steps)
    if current > latest:
        raise MigrationError(
            f"{where}: store schema version {current} is newer than this hub knows ({latest}); "
            "run the newer cloud-hub, or restore a backup made before it"
        )
    return list(steps[current:])


def latest(steps: Sequence[Step]) -> int:
    """The version a store has after all ``steps``."""
    return len(steps)
