"""The fit check: every failing reason, in the words both hub and node use."""

from __future__ import annotations

import msgspec
import pytest

from schemas.fit import Needs, check, verdict
from schemas.messages import Capabilities


def device(memory_mb: float, power_w: float | None, offline: bool, **more: object) -> Capabilities:
    return Capabilities(
        channels=["current", "pressure"],
        sample_hz=1.0,
        memory_mb=memory_mb,
        cpu_count=4,
        onnx_opset=17,
        ort_version="1.20",
        platform="Linux-aarch64",
        power_budget_w=power_w,
        offline_capable=offline,
        **more,  # type: ignore[arg-type]
    )


EDGE_A = device(512, 8, True)
EDGE_B = device(2048, 15, False)  # online only
EDGE_C = device(4096, 25, True)


@pytest.mark.parametrize(
    ("node", "memory_mb", "expected"),
    [
        (EDGE_A, 700, "CHECK memory,power"),
        (EDGE_B, 700, "CHECK offline"),
        (EDGE_C, 700, "FIT"),
        (EDGE_A, 350, "CHECK power"),
        (EDGE_B, 350, "CHECK offline"),
        (EDGE_C, 350, "FIT"),
    ],
)
def test_the_seed_fleet(node: Capabilities, memory_mb: float, expected: str) -> None:
    assert verdict(check(node, [Needs(memory_mb=memory_mb, power_w=10, offline=True)])) == expected


def test_models_that_run_together_add_up() -> None:
    one = Needs(memory_mb=300, power_w=6)
    assert check(EDGE_A, [one]) == []
    assert check(EDGE_A, [one, one]) == ["memory", "power"]


@pytest.mark.parametrize(
    ("needs", "node", "reasons"),
    [
        (
            Needs(memory_mb=1, power_w=0, hub=True),
            device(512, None, True, must_run_offline=True),
            ["hub"],
        ),
        (Needs(memory_mb=1, power_w=0, opset=18), EDGE_C, ["opset"]),
        (Needs(memory_mb=1, power_w=0, channels=["flow"]), EDGE_C, ["channels"]),
        (
            Needs(memory_mb=400, power_w=99),
            device(512, None, True, memory_available_mb=300),
            ["memory"],
        ),  # available memory counts when the node says it; no budget: no power
        (
            Needs(memory_mb=9999, power_w=99, offline=True, hub=True, opset=99, channels=["x"]),
            device(1, 1, False, must_run_offline=True),
            ["memory", "power", "offline", "hub", "opset", "channels"],
        ),
    ],
)
def test_every_reason_and_only_the_failing_ones(
    needs: Needs, node: Capabilities, reasons: list[str]
) -> None:
    assert check(node, [needs]) == reasons


def test_a_birth_from_before_the_fit_fields_still_decodes() -> None:
    old = msgspec.json.encode(EDGE_A)
    plain = msgspec.json.decode(old)
    for key in ("memory_available_mb", "must_run_offline", "price"):
        plain.pop(key)
    assert (
        msgspec.json.decode(msgspec.json.encode(plain), type=Capabilities).must_run_offline is False
    )
