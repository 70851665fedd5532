from __future__ import annotations

import pytest

from cloud_hub.rollouts.variant import choose_variant
from shared.messages import AgentRuntime, MessageError, Status, decode, encode

LITERT = AgentRuntime(package="litert", version="1.2.0", xnnpack_int8=True)
LEGACY = AgentRuntime(package="tflite-runtime", version="2.14.0", xnnpack_int8=False)


def test_int8_where_xnnpack_runs_it() -> None:
    quantization, why = choose_variant(LITERT, {"int8", "float32"}) or ("", "")
    assert quantization == "int8"
    assert "litert 1.2.0" in why


def test_float32_on_legacy_runtime() -> None:
    quantization, why = choose_variant(LEGACY, {"int8", "float32"}) or ("", "")
    assert quantization == "float32"
    assert "does not run int8" in why


def test_falls_back_to_the_variant_that_passed_parity() -> None:
    assert choose_variant(LEGACY, {"int8"}) == (
        "int8", "tflite-runtime 2.14.0: XNNPACK does not run int8, float32 is faster; "
        "float32 failed parity")
    assert choose_variant(LITERT, {"float32"})[0] == "float32"  # type: ignore[index]
    assert choose_variant(LITERT, set()) is None


def test_unreported_runtime_keeps_int8() -> None:
    assert choose_variant(None, {"int8", "float32"})[0] == "int8"  # type: ignore[index]


def test_status_with_and_without_runtime() -> None:
    old = Status(device_id="d1", state="online", at=5.0, agent_version="0.1.0")
    wire = encode(old)
    assert b"runtime" not in wire  # hubs of earlier builds refuse unknown fields
    assert decode(Status, wire) == old
    new = Status(device_id="d1", state="online", at=5.0, runtime=LEGACY)
    assert decode(Status, encode(new)).runtime == LEGACY
    bad = wire[:-1] + b',"runtime":{"package":"x","xnnpack_int8":true,"extra":1}}'
    with pytest.raises(MessageError):
        decode(Status, bad)
