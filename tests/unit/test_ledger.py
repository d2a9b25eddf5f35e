"""The command ledger: commands, acks, duplicates across connections, query order."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest

from cloud_hub.commands.ledger import NOT_RECORDED, Ledger, LedgerError, record_of
from schemas.messages import Ack, Deploy, ModelRef, Ping, Retrain, Rollback
from schemas.samples import SAMPLES

T0 = 1_800_000_000.0
DEPLOY = cast(Deploy, SAMPLES["cmd_deploy"])
RETRAIN = cast(Retrain, SAMPLES["cmd_retrain"])
PING = cast(Ping, SAMPLES["cmd_ping"])
ACK = cast(Ack, SAMPLES["ack"])


def deploy(command_id: str, node: str, issued_at: float) -> Deploy:
    return msgspec.structs.replace(DEPLOY, id=command_id, node=node, issued_at=issued_at)


def ack(command: str, node: str, seq: int, status: str, ts: float, **changes: Any) -> Ack:
    fields: dict[str, Any] = {
        "command": command,
        "node": node,
        "seq": seq,
        "status": status,
        "ts": ts,
        "boot": "b1",
        "command_type": "deploy",
        **changes,
    }
    return msgspec.structs.replace(ACK, **fields)


@pytest.fixture
def ledger(tmp_path: Path) -> Iterator[Ledger]:
    ledger = Ledger(tmp_path / "ledger.db")
    yield ledger
    ledger.close()


def test_a_deploy_is_recorded_with_its_model_and_chunk_size(ledger: Ledger) -> None:
    command = deploy("c1", "pump-1", T0)
    ledger.record_command(record_of(command, "tester"))
    record = ledger.command("c1")
    assert record is not None
    assert (record.type, record.node, record.issued_by) == ("deploy", "pump-1", "tester")
    assert record.model == ModelRef(command.manifest.name, command.manifest.version)
    assert record.args["chunk_size"] == command.chunk_size
    assert record.args["chunks"] == command.chunks
    assert record.expires_at == command.expires_at
    assert ledger.command("unknown") is None


def test_retrain_and_ping_records_carry_their_own_fields(ledger: Ledger) -> None:
    retrain = record_of(RETRAIN, "t")
    ping = record_of(PING, "t")
    assert (retrain.type, retrain.args, retrain.model) == (
        "retrain",
        {"readings": 600, "mode": "next"},
        None,
    )
    assert (ping.type, ping.args) == ("ping", {})
    rollback = cast(Rollback, SAMPLES["cmd_rollback"])
    assert record_of(rollback, "t").args == {}
    assert record_of(msgspec.structs.replace(rollback, to="3"), "t").args == {"to": "3"}


def test_a_command_id_cannot_be_recorded_twice(ledger: Ledger) -> None:
    ledger.record_command(record_of(deploy("c1", "pump-1", T0), "t"))
    with pytest.raises(LedgerError, match="c1"):
        ledger.record_command(record_of(deploy("c1", "pump-2", T0), "t"))


def test_acks_come_back_in_the_order_the_node_sent_them(ledger: Ledger) -> None:
    ledger.record_command(record_of(deploy("c1", "pump-1", T0), "t"))
    # Received out of order (two processes, or a redelivery): the node's ts and seq decide.
    ledger.record_ack(ack("c1", "pump-1", 12, "applied", T0 + 2), T0 + 2.5)
    ledger.record_ack(ack("c1", "pump-1", 11, "accepted", T0 + 1, detail={"need": "0-1"}), T0 + 3)
    [history] = ledger.commands()
    assert [a.status for a in history.acks] == ["accepted", "applied"]
    assert history.acks[0].detail == {"need": "0-1"}
    assert history.last is not None and history.last.status == "applied"


def test_seq_orders_acks_within_a_boot_whatever_their_timestamps(ledger: Ledger) -> None:
    """A node stamps messages as it builds them; seq is the order it queued them in."""
    ledger.record_command(record_of(deploy("c1", "pump-1", T0), "t"))
    ledger.record_ack(ack("c1", "pump-1", 21, "applied", T0 + 1.0), T0 + 2)
    ledger.record_ack(ack("c1", "pump-1", 20, "accepted", T0 + 1.5), T0 + 2)
    [history] = ledger.commands()
    assert [a.status for a in history.acks] == ["accepted", "applied"]


def test_a_restarted_nodes_acks_follow_its_earlier_boot(ledger: Ledger) -> None:
    """seq starts again at 0 in a new boot; the boots are ordered by time."""
    ledger.record_command(record_of(deploy("c1", "pump-1", T0), "t"))
    ledger.record_ack(ack("c1", "pump-1", 0, "failed", T0 + 30, boot="b2"), T0 + 31)
    ledger.record_ack(ack("c1", "pump-1", 40, "accepted", T0 + 1), T0 + 2)
    [history] = ledger.commands()
    assert [(a.boot, a.status) for a in history.acks] == [("b1", "accepted"), ("b2", "failed")]


def test_the_same_ack_from_two_connections_is_stored_once(tmp_path: Path) -> None:
    serve, cli = Ledger(tmp_path / "l.db"), Ledger(tmp_path / "l.db")
    try:
        cli.record_command(record_of(deploy("c1", "pump-1", T0), "t"))
        message = ack("c1", "pump-1", 5, "applied", T0 + 1)
        assert serve.record_ack(message, T0 + 1.1) is True
        assert cli.record_ack(message, T0 + 1.2) is False
        [history] = serve.commands()
        assert len(history.acks) == 1
        assert history.acks[0].received_at == T0 + 1.1
    finally:
        serve.close()
        cli.close()


def test_commands_are_newest_first_limited_and_filtered_by_node(ledger: Ledger) -> None:
    for i, node in enumerate(["pump-1", "pump-2", "pump-1", "pump-2", "pump-1"]):
        ledger.record_command(record_of(deploy(f"c{i}", node, T0 + i), "t"))
    assert [h.command.id for h in ledger.commands()] == ["c4", "c3", "c2", "c1", "c0"]
    assert [h.command.id for h in ledger.commands(limit=2)] == ["c4", "c3"]
    assert [h.command.id for h in ledger.commands(node="pump-2")] == ["c3", "c1"]


def test_an_ack_belongs_to_its_command_and_node_only(ledger: Ledger) -> None:
    ledger.record_command(record_of(deploy("c1", "pump-1", T0), "t"))
    ledger.record_command(record_of(deploy("c2", "pump-2", T0 + 1), "t"))
    ledger.record_ack(ack("c1", "pump-2", 1, "applied", T0 + 2), T0 + 2)  # wrong node
    ledger.record_ack(ack("c2", "pump-2", 2, "rejected", T0 + 2, reason="expired"), T0 + 2)
    c2, c1 = ledger.commands()
    assert c1.acks == []
    assert [(a.status, a.reason) for a in c2.acks] == [("rejected", "expired")]


def test_an_unusable_file_raises_ledger_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "ledger.db"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(LedgerError, match=str(path)):
        Ledger(path)


def test_commands_sent_by_other_tools_are_listed_from_their_acks(ledger: Ledger) -> None:
    ledger.record_command(record_of(deploy("c1", "pump-1", T0), "t"))
    ledger.record_ack(ack("x9", "pump-1", 1, "rejected", T0 + 5, command_type="ping"), T0 + 5)
    ledger.record_ack(ack("x9", "pump-1", 2, "rejected", T0 + 6, command_type="ping"), T0 + 6)
    ledger.record_ack(ack("x8", "pump-2", 1, "applied", T0 + 7), T0 + 7)
    newest, other, known = ledger.commands()
    assert (newest.command.id, newest.command.node, newest.command.issued_at) == (
        "x8",
        "pump-2",
        T0 + 7,
    )
    assert (other.command.id, other.command.type, other.command.issued_by) == (
        "x9",
        "ping",
        NOT_RECORDED,
    )
    assert [a.seq for a in other.acks] == [1, 2]
    assert known.command.id == "c1"
    assert [h.command.id for h in ledger.commands(node="pump-1")] == ["x9", "c1"]
    assert [h.command.id for h in ledger.commands(limit=1)] == ["x8"]
