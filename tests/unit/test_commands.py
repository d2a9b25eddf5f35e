"""Command decisions on the node: what is refused, repeated or run, and the book of last acks."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import msgspec

from edge_node.lifecycle.commands import AckDraft, CommandBook, NodeView, decide, draft
from edge_node.lifecycle.ledger import Ledger
from schemas.fit import Needs
from schemas.messages import Capabilities, Deploy, ModelRef, Ping, Retrain, Rollback
from schemas.samples import MANIFEST

NOW = 1_767_225_700.0
ACTIVE = ModelRef("pump-pca", "2")
ENV: dict[str, Any] = {"node": "pump-01", "boot": "hub", "seq": 1, "ts": NOW}
BASE = {**ENV, "issued_at": NOW, "expires_at": NOW + 60}


def view(**changes: Any) -> NodeView:
    base = NodeView(
        node="pump-01",
        channels=["current", "pressure", "voltage"],
        capabilities=None,
        active=ACTIVE,
        active_sha256="a" * 64,
        previous=ModelRef("pump-pca", "1"),
        model_busy="",
        capture_busy="",
        capture_capacity=1000,
        buffered=500,
    )
    return replace(base, **changes)


def ping(cid: str = "c-1", **changes: Any) -> Ping:
    return Ping(**{**BASE, "id": cid, **changes})


def deploy(cid: str = "d-1", size: int = 2048, chunk_size: int = 1024, chunks: int = 2) -> Deploy:
    return Deploy(
        **BASE,
        id=cid,
        manifest=msgspec.structs.replace(
            MANIFEST,
            input=msgspec.structs.replace(MANIFEST.input, channels=["pressure", "current"]),
        ),
        size=size,
        chunk_size=chunk_size,
        chunks=chunks,
    )


def test_a_new_ping_runs() -> None:
    assert decide(ping(), view(), CommandBook(), NOW) is None


def test_an_expired_command_is_rejected_naming_both_times() -> None:
    ack = decide(ping(expires_at=NOW - 90), view(), CommandBook(), NOW)
    assert ack is not None and ack.status == "rejected"
    assert "expired" in ack.reason
    assert "2026-01-01T00:00:10.000+00:00" in ack.reason  # expires_at
    assert "2026-01-01T00:01:40.000+00:00" in ack.reason  # the node's clock


def test_a_command_for_another_node_is_rejected() -> None:
    ack = decide(ping(node="pump-02"), view(), CommandBook(), NOW)
    assert ack is not None and ack.status == "rejected"
    assert "pump-02" in ack.reason and "pump-01" in ack.reason


def test_a_repeated_id_gets_its_last_ack_again_marked_duplicate() -> None:
    book = CommandBook()
    applied = draft(ping("c-7"), "applied", model=ACTIVE, detail={"uptime_s": "3.0"})
    book.record(applied)
    # Even expired by now: the answer is what the node did with it.
    ack = decide(ping("c-7", expires_at=NOW - 1), view(), book, NOW)
    assert ack is not None
    assert (ack.status, ack.model, ack.command_type) == ("applied", ACTIVE, "ping")
    assert ack.detail == {"uptime_s": "3.0", "duplicate": "true"}
    assert book.last("c-7") == applied  # the book keeps the original


def test_deploy_and_rollback_are_rejected_while_a_deploy_runs() -> None:
    busy = view(model_busy="deploy d-0")
    for command in (deploy(), Rollback(**BASE, id="r-1")):
        ack = decide(command, busy, CommandBook(), NOW)
        assert ack is not None and ack.status == "rejected"
        assert ack.reason == "deploy d-0 in progress"


def test_rollback_without_a_previous_model_is_rejected() -> None:
    command = Rollback(**BASE, id="r-1")
    ack = decide(command, view(previous=None), CommandBook(), NOW)
    assert ack is not None and (ack.status, ack.reason) == ("rejected", "no previous model")
    assert decide(command, view(), CommandBook(), NOW) is None


def test_deploy_needing_a_sensor_the_node_lacks_is_rejected() -> None:
    ack = decide(deploy(), view(channels=["current", "voltage"]), CommandBook(), NOW)
    assert ack is not None and ack.status == "rejected"
    assert "pressure" in ack.reason and "sensors" in ack.reason


def test_deploy_of_a_model_that_does_not_fit_is_rejected_in_the_hubs_words() -> None:
    small = Capabilities(
        channels=["current", "pressure", "voltage"],
        sample_hz=1.0,
        memory_mb=512.0,
        cpu_count=4,
        onnx_opset=21,
        ort_version="1.20",
        platform="Linux-aarch64",
        power_budget_w=8.0,
    )
    needy = deploy()
    needy = msgspec.structs.replace(
        needy,
        manifest=msgspec.structs.replace(needy.manifest, needs=Needs(memory_mb=700, power_w=10)),
    )
    ack = decide(needy, view(capabilities=small), CommandBook(), NOW)
    assert ack is not None and ack.status == "rejected"
    assert ack.reason == "does not fit this node: CHECK memory,power"
    assert decide(deploy(), view(capabilities=small), CommandBook(), NOW) is None  # no needs


def test_deploy_whose_chunk_count_does_not_add_up_is_rejected() -> None:
    ack = decide(deploy(size=2049, chunks=2), view(), CommandBook(), NOW)
    assert ack is not None and ack.status == "rejected"
    assert "makes 3" in ack.reason
    assert decide(deploy(size=2049, chunks=3), view(), CommandBook(), NOW) is None


def test_deploying_the_active_version_again() -> None:
    same = view(active=ModelRef("pump-pca", "3"), active_sha256=MANIFEST.sha256)
    ack = decide(deploy(), same, CommandBook(), NOW)
    assert ack is not None and (ack.status, ack.model) == ("applied", ModelRef("pump-pca", "3"))
    changed = view(active=ModelRef("pump-pca", "3"), active_sha256="b" * 64)
    ack = decide(deploy(), changed, CommandBook(), NOW)
    assert ack is not None and ack.status == "rejected" and "new version" in ack.reason


def retrain(cid: str, readings: int, mode: Literal["next", "last"]) -> Retrain:
    return Retrain(**BASE, id=cid, readings=readings, mode=mode)


def test_retrain_checks() -> None:
    book = CommandBook()
    over = decide(retrain("t-1", 1001, "last"), view(), book, NOW)
    assert over is not None and over.status == "rejected" and "capture_buffer" in over.reason
    busy = decide(retrain("t-2", 10, "next"), view(capture_busy="retrain t-0"), book, NOW)
    assert busy is not None and busy.reason == "retrain t-0 in progress"
    empty = decide(retrain("t-3", 10, "last"), view(buffered=0), book, NOW)
    assert empty is not None and empty.status == "rejected"
    assert decide(retrain("t-4", 1000, "next"), view(), book, NOW) is None
    assert decide(retrain("t-5", 1000, "last"), view(capture_busy="retrain t-0"), book, NOW) is None


def test_the_book_forgets_the_oldest_ids_first() -> None:
    book = CommandBook(capacity=3)
    for i in range(5):
        book.record(draft(ping(f"c-{i}"), "applied"))
    assert [book.last(f"c-{i}") is not None for i in range(5)] == [False, False, True, True, True]
    book.record(draft(ping("c-2"), "applied"))  # touched again: now the newest
    book.record(draft(ping("c-5"), "applied"))
    assert book.last("c-2") is not None and book.last("c-3") is None


def test_the_book_survives_a_restart(tmp_path: Path) -> None:
    ledger = Ledger(tmp_path / "commands.json")
    book = ledger.load()
    accepted = draft(deploy("d-9"), "accepted", model=ACTIVE, detail={"need": "0-1"})
    book.record(draft(ping("c-1"), "rejected", "expired: ..."))
    book.record(accepted)
    ledger.save(book)
    again = Ledger(tmp_path / "commands.json").load()
    assert again.last("c-1") == book.last("c-1")
    assert again.last("d-9") == accepted
    assert again.unfinished() == [accepted]
    repeated = decide(deploy("d-9"), view(), again, NOW)
    assert repeated is not None and repeated.detail == {"need": "0-1", "duplicate": "true"}
    assert not list(tmp_path.glob(".commands-*")), "no temporary file is left behind"


def test_an_unreadable_book_is_moved_aside_and_the_node_starts(tmp_path: Path) -> None:
    path = tmp_path / "commands.json"
    path.write_text('[{"command": 3}')
    book = Ledger(path).load()
    assert len(book) == 0
    assert not path.exists() and len(list(tmp_path.glob("commands.json.bad-*"))) == 1


def test_ack_draft_stamps_an_envelope() -> None:
    ack = AckDraft(command="c-1", command_type="ping", status="applied", detail={"a": "b"})
    message = ack.stamped(node="pump-01", boot="b1", seq=4, ts=NOW)
    assert (message.node, message.seq, message.command, message.detail) == (
        "pump-01",
        4,
        "c-1",
        {"a": "b"},
    )
