"""Commands to nodes that are not there are refused at once, naming why."""

from __future__ import annotations

import msgspec

from cloud_hub.commands.presence import absent
from schemas.messages import Status
from schemas.samples import SAMPLES

BIRTH = SAMPLES["status"]
assert isinstance(BIRTH, Status)


def test_online_nodes_pass_and_others_are_named_with_why() -> None:
    will = msgspec.structs.replace(BIRTH, node="pump-2", state="offline", ts=1_767_225_600.0)
    statuses: dict[str, Status] = {"pump-01": BIRTH, "pump-2": will}  # type: ignore[dict-item]
    assert absent(["pump-01", "pump-2", "pump-9"], statuses) == {
        "pump-2": "offline since 2026-01-01 00:00:00 UTC",
        "pump-9": "unknown node: the broker holds no birth from it",
    }
    assert absent(["pump-01"], statuses) == {}
