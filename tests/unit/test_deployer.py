"""Assembling a deploy's artifact from chunks: what is still needed, retries, and the checks."""

from __future__ import annotations

import hashlib

import pytest

from edge_node.lifecycle.deployer import Ask, Assembly, AssemblyError, ChunkOutcome, Spec
from schemas.commands import split_artifact
from schemas.messages import ModelChunk, ModelRef

REF = ModelRef("pump-pca", "4")
ARTIFACT = bytes(range(256)) * 40  # 10,240 bytes
PARTS = split_artifact(ARTIFACT, 1000)  # 11 chunks


SPEC = Spec(REF, len(ARTIFACT), len(PARTS), hashlib.sha256(ARTIFACT).hexdigest())


def chunk(index: int, data: bytes | None = None, model: ModelRef = REF) -> ModelChunk:
    payload = PARTS[index] if data is None else data
    return ModelChunk(
        node="hub",
        boot="h",
        seq=index,
        ts=0.0,
        model=model,
        index=index,
        chunks=len(PARTS),
        data=payload,
    )


def assembly() -> Assembly:
    return Assembly(SPEC, now=0.0, timeout_s=5.0, retries=2)


def test_need_shrinks_as_chunks_arrive_in_any_order() -> None:
    a = assembly()
    assert a.need_text() == "0-10"
    for i in (7, 0, 10, 3):
        assert a.add(chunk(i), now=1.0) is ChunkOutcome.NEW
    assert a.need_text() == "1-2,4-6,8-9"
    assert a.add(chunk(3), now=1.0) is ChunkOutcome.DUPLICATE
    for i in a.need():
        a.add(chunk(i), now=2.0)
    assert a.complete and a.need_text() == ""
    assert a.artifact() == ARTIFACT


def test_chunks_of_another_model_or_shape_are_not_taken() -> None:
    a = assembly()
    assert a.add(chunk(0, model=ModelRef("pump-pca", "5")), 1.0) is ChunkOutcome.FOREIGN
    bad_count = ModelChunk(
        node="hub", boot="h", seq=1, ts=0.0, model=REF, index=0, chunks=3, data=b"x"
    )
    assert a.add(bad_count, 1.0) is ChunkOutcome.INVALID
    beyond = ModelChunk(
        node="hub", boot="h", seq=1, ts=0.0, model=REF, index=11, chunks=11, data=b"x"
    )
    assert a.add(beyond, 1.0) is ChunkOutcome.INVALID
    assert a.need() == list(range(11))


def test_a_quiet_hub_is_asked_again_then_the_deploy_fails() -> None:
    a = assembly()
    assert a.tick(4.9) is None
    a.add(chunk(0), now=4.0)  # progress restarts the clock
    assert a.tick(8.9) is None
    assert a.tick(9.0) == Ask(list(range(1, 11)))
    for i in range(1, 9):
        a.add(chunk(i), now=10.0)
    assert a.tick(14.9) is None
    assert a.tick(15.0) == Ask([9, 10])
    assert a.tick(19.9) is None
    with pytest.raises(
        AssemblyError, match=r"chunks 9-10 never arrived \(asked 3 times, 5 s apart\)"
    ):
        a.tick(20.0)


def test_repeated_chunks_are_no_progress() -> None:
    a = assembly()
    a.add(chunk(0), now=0.0)
    a.add(chunk(0), now=4.0)
    assert a.tick(5.0) == Ask(list(range(1, 11)))


def test_a_corrupt_artifact_is_refused_by_its_sha256() -> None:
    a = assembly()
    for i in range(len(PARTS)):
        a.add(chunk(i, PARTS[i] if i != 4 else b"\x00" + PARTS[4][1:]), now=1.0)
    with pytest.raises(AssemblyError, match="sha256 mismatch: artifact corrupt"):
        a.artifact()


def test_an_artifact_of_the_wrong_size_is_refused() -> None:
    a = assembly()
    for i in range(len(PARTS)):
        a.add(chunk(i, PARTS[i][:-1] if i == 10 else None), now=1.0)
    with pytest.raises(AssemblyError, match=r"size mismatch: the chunks hold 10239 bytes"):
        a.artifact()


def test_an_incomplete_artifact_is_not_handed_out() -> None:
    a = assembly()
    a.add(chunk(0), now=1.0)
    with pytest.raises(AssemblyError, match="1-10 are still missing"):
        a.artifact()
