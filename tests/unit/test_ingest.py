"""The hub's inbound path: rejects, dedupe, counting and status ordering."""

from __future__ import annotations

import logging
import random
from typing import Any

import msgspec
import numpy as np
import pytest
from numpy.typing import NDArray

from cloud_hub.ingest.dedupe import Deduper
from cloud_hub.ingest.fleet import FleetState
from cloud_hub.ingest.inbound import REJECT_REASONS, Ingest, Outcome
from schemas.codec import MESSAGE_TYPES, encode
from schemas.messages import Ack, Capture, ChannelDrift
from schemas.packing import pack_f32, pack_flags
from schemas.samples import SAMPLES
from schemas.topics import Kind, node_topic

NOW = 1_800_000_000.0
KIND_OF = {typ: kind for kind, typ in MESSAGE_TYPES.items()}


class RecordingSink:
    """Keeps what it was given, to check what ingest hands on."""

    def __init__(self) -> None:
        self.acks: list[Ack] = []
        self.captures: list[Capture] = []

    def on_ack(self, ack: Ack, now: float) -> None:
        self.acks.append(ack)

    def on_capture(self, capture: Capture, now: float) -> None:
        self.captures.append(capture)


def msg(kind: str, node: str = "pump-01", **changes: Any) -> Any:
    """The golden sample of ``kind`` for ``node`` with ``changes`` applied."""
    return msgspec.structs.replace(SAMPLES[kind], node=node, **changes)


def result(node: str, seq: int, flags: NDArray[np.bool_], first: int = 0, boot: str = "b1") -> Any:
    n = len(flags)
    return msg(
        "result",
        node,
        seq=seq,
        boot=boot,
        first=first,
        n=n,
        scores=pack_f32(np.where(flags, 9.0, 1.0)),
        flags=pack_flags(flags),
    )


def send(ingest: Ingest, message: Any, now: float = NOW, topic: str = "") -> Outcome:
    kind = Kind(KIND_OF[type(message)])
    return ingest.handle(topic or node_topic(message.node, kind), encode(message), now)


@pytest.fixture
def ingest() -> Ingest:
    return Ingest(FleetState(offline_after_s=60.0), Deduper())


def test_counts_readings_and_anomalies_from_result_batches(ingest: Ingest) -> None:
    rng = np.random.default_rng(5)
    batches = [rng.random(n) < 0.2 for n in (1, 7, 8, 9, 64, 100)]
    first = 0
    for seq, flags in enumerate(batches):
        assert send(ingest, result("pump-01", seq, flags, first)).status == "applied"
        first += len(flags)
    state = ingest.fleet.node("pump-01")
    assert state is not None
    assert state.readings == sum(len(f) for f in batches)
    assert state.anomalous == sum(int(f.sum()) for f in batches)
    assert ingest.messages["result"] == len(batches)
    assert ingest.fleet.missing_readings("pump-01") == 0


def test_duplicates_are_not_counted_twice(ingest: Ingest) -> None:
    batch = result("pump-01", 3, np.array([True, False, True]))
    send(ingest, batch)
    outcome = send(ingest, batch)
    assert outcome.status == "duplicate"
    state = ingest.fleet.node("pump-01")
    assert state is not None
    assert (state.readings, state.anomalous) == (3, 2)
    assert ingest.duplicates == 1
    assert ingest.messages["result"] == 1


def test_missing_readings_follow_result_coverage(ingest: Ingest) -> None:
    ok = np.zeros(10, dtype=bool)
    send(ingest, result("pump-01", 0, ok, first=0))
    send(ingest, result("pump-01", 2, ok[:5], first=20))
    assert ingest.fleet.missing_readings("pump-01") == 10
    assert ingest.deduper.gaps("pump-01") == 1
    send(ingest, result("pump-01", 1, ok, first=10))
    assert ingest.fleet.missing_readings("pump-01") == 0
    assert ingest.deduper.gaps("pump-01") == 0


@pytest.mark.parametrize(
    ("topic", "payload", "reason", "type_"),
    [
        ("edgeml/v1/pump-01/result", b"\xc1\xc1not msgpack", "malformed", "result"),
        ("edgeml/v1/pump-01/telemetry", b"", "malformed", "telemetry"),
        ("edgeml/v1/pump-01/result", encode(SAMPLES["status"]), "invalid", "result"),
        ("edgeml/v1/pump-01/status", msgspec.msgpack.encode([1, 2, 3]), "invalid", "status"),
        ("edgeml/v1/pump-02/status", encode(SAMPLES["status"]), "node_mismatch", "status"),
        ("edgeml/v1/pump-01/cmd", encode(SAMPLES["cmd_ping"]), "unexpected_kind", "cmd"),
        ("edgeml/v1/pump-01/weather", b"x", "bad_topic", "unknown"),
        ("edgeml/v2/pump-01/result", b"x", "bad_topic", "unknown"),
        ("edgeml/v1/pump 01/result", b"x", "bad_topic", "unknown"),
        ("edgeml/v1/models/m/1/0", b"x", "bad_topic", "unknown"),
    ],
)
def test_every_reject_reason_is_counted_with_its_type(
    ingest: Ingest, topic: str, payload: bytes, reason: str, type_: str
) -> None:
    outcome = ingest.handle(topic, payload, NOW)
    assert (outcome.status, outcome.reason) == ("rejected", reason)
    assert ingest.rejects == {(reason, type_): 1}
    assert reason in REJECT_REASONS
    assert sum(ingest.messages.values()) == 0
    assert len(ingest.fleet) == 0


def test_result_whose_scores_do_not_match_n_is_invalid(ingest: Ingest) -> None:
    raw = msgspec.msgpack.decode(encode(SAMPLES["result"]))
    raw["n"] = 4  # 3 scores on the wire
    outcome = ingest.handle("edgeml/v1/pump-01/result", msgspec.msgpack.encode(raw), NOW)
    assert outcome.reason == "invalid"
    assert "scores" in outcome.detail


def test_reject_is_logged_with_topic_and_reason_but_not_the_payload(
    ingest: Ingest, caplog: pytest.LogCaptureFixture
) -> None:
    raw = msgspec.msgpack.decode(encode(SAMPLES["telemetry"]))
    raw["rss_bytes"] = "SECRET-PAYLOAD-MARKER"
    topic = "edgeml/v1/pump-01/telemetry"
    with caplog.at_level(logging.WARNING, logger="cloud_hub.ingest.inbound"):
        ingest.handle(topic, msgspec.msgpack.encode(raw), NOW)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    text = record.getMessage()
    assert topic in text and "invalid" in text and "rss_bytes" in text
    assert "SECRET-PAYLOAD-MARKER" not in text


def test_garbage_never_raises(ingest: Ingest) -> None:
    rng = random.Random(11)
    valid = encode(SAMPLES["result"])
    payloads = [rng.randbytes(rng.randrange(0, 200)) for _ in range(300)]
    payloads += [valid[:cut] for cut in range(len(valid))]
    for i, payload in enumerate(payloads):
        outcome = ingest.handle("edgeml/v1/pump-01/result", payload, NOW + i)
        assert outcome.status == "rejected"
        assert outcome.reason in {"malformed", "invalid"}
    assert sum(ingest.rejects.values()) == len(payloads)


def test_internal_errors_are_counted_by_type(ingest: Ingest) -> None:
    ingest.record_internal_error("edgeml/v1/pump-01/drift")
    ingest.record_internal_error("not/a/topic")
    assert ingest.rejects == {("internal", "drift"): 1, ("internal", "unknown"): 1}


def test_status_is_not_deduped(ingest: Ingest) -> None:
    birth = msg("status", seq=5, ts=100.0)
    assert send(ingest, birth).status == "applied"
    assert send(ingest, msg("status", seq=5, ts=101.0)).status == "applied"
    assert ingest.messages["status"] == 2


def test_status_ordering_by_ts(ingest: Ingest) -> None:
    fleet = ingest.fleet
    send(ingest, msg("status", boot="old", ts=100.0, state="online"))
    send(ingest, msg("status", boot="new", ts=200.0, state="online"))
    stale_will = msg("status", boot="old", ts=100.0, state="offline", capabilities=None)
    assert send(ingest, stale_will).status == "stale"
    state = fleet.node("pump-01")
    assert state is not None
    assert (state.online, state.boot) == (True, "new")
    older_birth = msg("status", boot="older", ts=150.0, state="online")
    assert send(ingest, older_birth).status == "stale"
    assert state.boot == "new"
    # The node sets its will once per boot, so it is older than later births of that boot.
    will = msg("status", boot="new", ts=190.0, seq=1, state="offline", capabilities=None)
    assert send(ingest, will).status == "applied"
    assert state.online is False
    assert state.capabilities is not None, "a will without capabilities keeps the known ones"
    assert not fleet.is_online(state, NOW)
    send(ingest, msg("status", boot="newest", ts=300.0, state="online"))
    assert fleet.is_online(state, NOW)


def test_a_node_goes_offline_after_silence(ingest: Ingest) -> None:
    send(ingest, msg("status", state="online"), now=NOW)
    state = ingest.fleet.node("pump-01")
    assert state is not None
    assert ingest.fleet.is_online(state, NOW + 60.0)
    assert not ingest.fleet.is_online(state, NOW + 61.0)
    assert ingest.fleet.counts(NOW + 61.0) == (0, 1)
    send(ingest, msg("telemetry", seq=40), now=NOW + 61.0)
    assert ingest.fleet.counts(NOW + 61.0) == (1, 0)


def test_a_will_is_no_sign_of_life(ingest: Ingest) -> None:
    send(ingest, msg("status", state="online", ts=100.0), now=NOW)
    send(ingest, msg("status", state="offline", ts=100.0), now=NOW + 30)
    state = ingest.fleet.node("pump-01")
    assert state is not None
    assert state.last_seen == NOW


def test_events_telemetry_and_drift_update_the_node(ingest: Ingest) -> None:
    send(ingest, msg("event", seq=1, state="open"))
    send(ingest, msg("event", seq=2, state="close", ended=NOW))
    send(ingest, msg("event", seq=3, state="open", episode=3))
    new_t = msg("telemetry", seq=5, ts=NOW, outbox_depth=7, errors={"a": 2, "b": 3})
    old_t = msg("telemetry", seq=4, ts=NOW - 10, outbox_depth=99)
    send(ingest, new_t)
    send(ingest, old_t)  # late: must not replace the newer report
    channels = [
        ChannelDrift(channel=c, psi=p, mean_shift_sd=s, mean=0.0, std=1.0)
        for c, p, s in [("a", 0.1, -3.0), ("b", 0.4, 1.0), ("c", 0.2, 0.5)]
    ]
    send(ingest, msg("drift", seq=6, channels=channels))
    state = ingest.fleet.node("pump-01")
    assert state is not None and state.telemetry is not None and state.drift is not None
    assert (state.events_opened, state.events_closed) == (2, 1)
    assert state.telemetry.outbox_depth == 7
    assert state.errors_total == 5
    assert (state.drift.psi_max, state.drift.psi_max_channel) == (0.4, "b")
    assert state.drift.mean_shift_max_sd == 3.0


def test_acks_and_captures_go_to_their_sinks_once() -> None:
    sink = RecordingSink()
    ingest = Ingest(FleetState(60.0), Deduper(), acks=sink, captures=sink)
    ack, capture = msg("ack", seq=1), msg("capture", seq=2)
    for message in (ack, capture, ack, capture):
        send(ingest, message)
    assert sink.acks == [ack]
    assert sink.captures == [capture]
    assert (ingest.acks_received, ingest.capture_chunks) == (1, 1)


def test_dirty_nodes_are_reported_once(ingest: Ingest) -> None:
    send(ingest, msg("status", node="a"))
    send(ingest, msg("status", node="b"))
    assert sorted(s.node for s in ingest.fleet.take_dirty()) == ["a", "b"]
    assert ingest.fleet.take_dirty() == []
    send(ingest, msg("telemetry", node="b"))
    failed = ingest.fleet.take_dirty()
    assert [s.node for s in failed] == ["b"]
    ingest.fleet.mark_dirty(failed)  # as the app does when the registry write fails
    assert ingest.fleet.take_dirty() == failed
