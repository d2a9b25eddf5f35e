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


def test_a_command_nobody_answered_shows_expired_once_it_has() -> None:
    from cloud_hub.cli.models import format_commands
    from cloud_hub.commands.ledger import CommandHistory, CommandRecord

    record = CommandRecord(
        id="c-1",
        type="ping",
        node="pump-9",
        issued_at=100.0,
        expires_at=700.0,
        model=None,
        args={},
        issued_by="t",
    )
    history = [CommandHistory(record)]
    assert format_commands(history, now=600.0).splitlines()[1].split()[-1] == "sent"
    assert format_commands(history, now=701.0).splitlines()[1].split()[-1] == "expired"


def test_the_cli_offers_every_detector_family_the_trainer_has() -> None:
    # The CLI keeps its own list so that building the parser does not import onnx.
    from cloud_hub.cli import training
    from cloud_hub.models import trainer

    assert training.ALGORITHMS == trainer.ALGORITHMS
