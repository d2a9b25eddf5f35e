"""Where the tests find the SKAB data: ``SKAB_DIR``, else ``../shared/data/skab`` beside the repo.

The data is not part of the repository. Without it the tests that read it skip with one line
naming ``SKAB_DIR``; under ``CI=true`` a missing folder fails them instead, so that CI can never
pass by skipping them.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SKAB_DIR = Path(
    os.environ.get("SKAB_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "skab")
)


def skab_file(relative: str) -> Path:
    """The path of one SKAB file; skips (fails under CI=true) when it is not there."""
    path = SKAB_DIR / relative
    if not path.is_file():
        message = f"SKAB data not found: {path} (set SKAB_DIR to the folder holding valve1/)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path
