"""The CLI's command orchestration (pure): built commands, per-node ack states, reports."""

from __future__ import annotations

from typing import Any, cast

import msgspec
import pytest

from cloud_hub.commands.commander import (
    EXIT_FAILED,
    EXIT_OK,
    NO_CHUNKS_AFTER_S,
    Issue,
    Tracker,
    build_deploy,
    build_ping,
    build_retrain,
    build_rollback,
)
from cloud_hub.commands.identity import HubIdentity
from schemas.codec import decode, encode
from schemas.messages import Ack, Command, Deploy, ModelRef, Ping, Retrain, Rollback
from schemas.samples import MANIFEST, SAMPLES

T0 = 1_800_000_000.0
MODEL = ModelRef("pump-pca", "3")


def issue(now: float = T0) -> Issue:
    return Issue(HubIdentity("hub-cli", boot="cafe"), now, expires_in=600.0)


def deploys(*nodes: str, size: int = 1000, chunk_size: int = 250) -> list[Command]:
    i = issue()
    return [
        build_deploy(
            i, n, manifest=MANIFEST, size=size, chunk_size=chunk_size, command_id=f"id-{n}"
        )
        for n in nodes
    ]


def ack(to: Command, status: str, **changes: Any) -> Ack:
    fields: dict[str, Any] = {
        "node": to.node,
        "command": to.id,
        "command_type": type(to).__struct_config__.tag,
        "status": status,
        "model": MODEL if status != "rejected" else None,
        "detail": {},
        **changes,
    }
    return cast(Ack, msgspec.structs.replace(SAMPLES["ack"], **fields))


def test_deploy_carries_the_manifest_size_and_chunking() -> None:
    i = issue()
    first = build_deploy(i, "pump-1", manifest=MANIFEST, size=1001, chunk_size=250, command_id="a")
    second = build_deploy(i, "pump-2", manifest=MANIFEST, size=0, chunk_size=250, command_id="b")
    assert (first.size, first.chunk_size, first.chunks) == (1001, 250, 5)
    assert second.chunks == 1  # an empty artifact is still one (empty) chunk
    assert (first.node, first.boot, first.seq, first.ts) == ("pump-1", "cafe", 0, T0)
    assert second.seq == 1
    assert (first.issued_at, first.expires_at) == (T0, T0 + 600.0)
    assert first.manifest == MANIFEST
    assert decode("cmd", encode(first)) == first


def test_other_commands_are_typed_and_decodable() -> None:
    i = issue()
    commands: list[Command] = [
        build_rollback(i, "pump-1", "r"),
        build_ping(i, "pump-1", "p"),
        build_retrain(i, "pump-1", readings=600, mode="last", command_id="t"),
    ]
    assert [type(c) for c in commands] == [Rollback, Ping, Retrain]
    assert [decode("cmd", encode(c)) for c in commands] == commands
    assert cast(Retrain, commands[2]).mode == "last"


def test_accepted_then_applied_exits_zero_with_model_and_time() -> None:
    [command] = deploys("pump-1")
    tracker = Tracker([command], T0, timeout=60)
    assert tracker.on_ack(ack(command, "accepted", detail={"need": "0-3"}), T0 + 0.5) is not None
    assert not tracker.done(T0 + 0.5)
    assert tracker.on_ack(ack(command, "applied"), T0 + 1.84) is not None
    assert tracker.done(T0 + 1.84)
    tracker.finish()
    assert tracker.report() == ["pump-1  applied   pump-pca@3   1.84 s"]
    assert tracker.exit_code() == EXIT_OK


def test_a_rejection_ends_the_node_with_its_reason() -> None:
    good, bad = deploys("pump-1", "pump-22")
    tracker = Tracker([good, bad], T0, timeout=60)
    tracker.on_ack(ack(bad, "rejected", reason="expired"), T0 + 0.1)
    assert not tracker.done(T0 + 0.1)
    tracker.on_ack(ack(good, "applied"), T0 + 2)
    assert tracker.done(T0 + 2)
    assert tracker.report() == [
        "pump-1   applied   pump-pca@3   2.00 s",
        "pump-22  rejected  expired",
    ]
    assert tracker.exit_code() == EXIT_FAILED


def test_a_rollback_after_the_switch_turns_applied_into_failed() -> None:
    [command] = deploys("pump-1")
    tracker = Tracker([command], T0, timeout=60, settle=5)
    tracker.on_ack(ack(command, "applied"), T0 + 1)
    assert not tracker.done(T0 + 3), "still settling"
    tracker.on_ack(ack(command, "failed", reason="rolled back: NaN scores"), T0 + 4)
    assert tracker.done(T0 + 4)
    assert tracker.report() == ["pump-1  failed    rolled back: NaN scores"]
    assert tracker.exit_code() == EXIT_FAILED


def test_settling_ends_when_no_rollback_came() -> None:
    [command] = deploys("pump-1")
    tracker = Tracker([command], T0, timeout=60, settle=5)
    tracker.on_ack(ack(command, "applied"), T0 + 1)
    assert not tracker.done(T0 + 5.9)
    assert tracker.done(T0 + 6)
    assert tracker.exit_code() == EXIT_OK


def test_ended_states_do_not_move_back() -> None:
    [command] = deploys("pump-1")
    tracker = Tracker([command], T0, timeout=60)
    tracker.on_ack(ack(command, "applied"), T0 + 1)
    assert tracker.on_ack(ack(command, "accepted", detail={"need": "0"}), T0 + 2) is None
    tracker.on_ack(ack(command, "failed", reason="rolled back"), T0 + 3)
    assert tracker.on_ack(ack(command, "applied"), T0 + 4) is None
    assert tracker.nodes["pump-1"].state == "failed"


def test_acks_of_other_commands_and_nodes_are_ignored() -> None:
    [command] = deploys("pump-1")
    tracker = Tracker([command], T0, timeout=60)
    assert tracker.on_ack(ack(command, "applied", command="other-id"), T0 + 1) is None
    assert tracker.on_ack(ack(command, "applied", node="pump-9"), T0 + 1) is None
    assert tracker.nodes["pump-1"].state == "sent"


def test_silence_until_the_deadline_is_a_timeout() -> None:
    quiet, busy = deploys("pump-1", "pump-2")
    tracker = Tracker([quiet, busy], T0, timeout=30)
    tracker.on_ack(ack(busy, "accepted", detail={"need": "0-3"}), T0 + 1)
    tracker.on_chunk(0)
    assert not tracker.done(T0 + 29.9)
    assert tracker.done(T0 + 30)
    tracker.finish()
    assert tracker.report() == [
        "pump-1  timeout   no answer within 30 s",
        "pump-2  timeout   accepted, no result within 30 s (1/4 chunks went out)",
    ]
    assert tracker.exit_code() == EXIT_FAILED


def test_no_chunk_after_an_accepted_deploy_points_at_serve() -> None:
    [command] = deploys("pump-1")
    tracker = Tracker([command], T0, timeout=60)
    tracker.on_ack(ack(command, "accepted", detail={"need": "0-3"}), T0 + 1)
    assert not tracker.chunks_missing(T0 + 1 + NO_CHUNKS_AFTER_S - 0.1)
    assert tracker.chunks_missing(T0 + 1 + NO_CHUNKS_AFTER_S)
    tracker.finish()
    assert "is cloud-hub serve running?" in tracker.report()[0]
    tracker.on_chunk(2)
    assert not tracker.chunks_missing(T0 + 50)


def test_an_accepted_ack_that_needs_nothing_does_not_wait_for_chunks() -> None:
    [command] = deploys("pump-1")
    tracker = Tracker([command], T0, timeout=60)
    tracker.on_ack(ack(command, "accepted", detail={"need": ""}), T0 + 1)
    assert not tracker.chunks_missing(T0 + 30)


def test_progress_counts_the_needed_chunks_seen_per_node() -> None:
    a, b, c = deploys("pump-1", "pump-2", "pump-3")
    tracker = Tracker([a, b, c], T0, timeout=60)
    assert tracker.progress() == "pump-1 waiting, pump-2 waiting, pump-3 waiting"
    tracker.on_ack(ack(a, "accepted", detail={"need": "0-3"}), T0)
    tracker.on_ack(ack(b, "accepted", detail={"need": "2-3"}), T0)
    tracker.on_ack(ack(c, "rejected", reason="no"), T0)
    for index in (0, 1, 2):
        tracker.on_chunk(index)
    assert tracker.progress() == "pump-1 3/4 chunks, pump-2 1/2 chunks, pump-3 rejected"
    # A node asking again for fewer chunks keeps its total: progress never goes backwards.
    tracker.on_ack(ack(a, "accepted", detail={"need": "3"}), T0 + 5)
    assert tracker.progress().startswith("pump-1 3/4 chunks")


def test_a_repeated_answer_is_reported_as_such() -> None:
    [command] = deploys("pump-1")
    tracker = Tracker([command], T0, timeout=60)
    tracker.on_ack(ack(command, "applied", detail={"duplicate": "true"}), T0 + 0.25)
    [line] = tracker.report()
    assert line.startswith("pump-1  applied   pump-pca@3   0.25 s")
    assert "had seen this command" in line
    assert tracker.exit_code() == EXIT_OK


def test_ping_reports_uptime() -> None:
    command = build_ping(issue(), "pump-1", "p1")
    tracker = Tracker([command], T0, timeout=10)
    tracker.on_ack(ack(command, "applied", detail={"uptime_s": "3600"}), T0 + 0.05)
    assert tracker.report() == ["pump-1  applied   pump-pca@3   0.05 s   up 3600 s"]


@pytest.mark.parametrize(
    ("statuses", "code"),
    [
        (["applied", "applied"], EXIT_OK),
        (["applied", "failed"], EXIT_FAILED),
        (["applied", None], EXIT_FAILED),
        (["rejected", "rejected"], EXIT_FAILED),
    ],
)
def test_exit_code_is_zero_only_when_every_node_applied(
    statuses: list[str | None], code: int
) -> None:
    commands = deploys("pump-1", "pump-2")
    tracker = Tracker(commands, T0, timeout=60)
    for command, status in zip(commands, statuses, strict=True):
        if status is not None:
            tracker.on_ack(ack(command, status, reason="r"), T0 + 1)
    tracker.finish()
    assert tracker.exit_code() == code


def test_deploy_commands_are_what_the_tracker_follows() -> None:
    [command] = deploys("pump-1", size=1000, chunk_size=250)
    assert isinstance(command, Deploy) and command.chunks == 4
    tracker = Tracker([command], T0, timeout=60)
    # A need beyond the command's chunk count is nonsense: it is not counted.
    tracker.on_ack(ack(command, "accepted", detail={"need": "0-9"}), T0)
    assert tracker.nodes["pump-1"].wanted == set()
