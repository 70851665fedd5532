"""Which quantization mode a model is published in: the one asked for, or the fastest passing."""

from __future__ import annotations

import pytest

from cloud_hub.quantize.compare import choose_mode
from cloud_hub.training.artifact import ParityReport
from shared.manifest import Quantization

pytestmark = pytest.mark.hub


def report(mode: str, us: float, agreement: float = 1.0) -> ParityReport:
    return ParityReport(
        quantization=Quantization(mode), decision_agreement=agreement, windows=1000,
        score_correlation=0.99, max_score_error=0.1, mean_score_error=0.01, size_bytes=100,
        float_size_bytes=300, us_per_window=us, runtime="tflite_runtime", min_agreement=0.99,
    )


def test_auto_picks_the_fastest_mode_that_passed_the_gate() -> None:
    # tflite-runtime 2.14 has no XNNPACK int8 kernels: float models are faster there
    reports = [report("int8", 6.0), report("float16", 3.5), report("float32", 2.8)]
    choice = choose_mode(reports, "auto")
    assert choice.mode is Quantization.FLOAT32
    assert choice.fastest_passing is Quantization.FLOAT32
    assert "float32: the fastest mode that passed the parity gate on tflite_runtime" in (
        choice.reason
    )
    assert choice.to_dict()["us_per_window"] == {"int8": 6.0, "float16": 3.5, "float32": 2.8}


def test_a_faster_mode_that_failed_the_gate_is_never_picked() -> None:
    reports = [report("int8", 1.0, agreement=0.95), report("float32", 3.0)]
    choice = choose_mode(reports, "auto")
    assert choice.mode is Quantization.FLOAT32
    assert "failed the parity gate: int8" in choice.reason


def test_modes_about_as_fast_as_the_fastest_tie_and_int8_wins_the_tie() -> None:
    reports = [report("int8", 2.3), report("float16", 2.2), report("float32", 2.7)]
    assert choose_mode(reports, "auto").mode is Quantization.INT8
    assert choose_mode(reports, "auto", tolerance=0.0).mode is Quantization.FLOAT16


def test_auto_never_publishes_dynamic_which_the_legacy_runtime_cannot_load() -> None:
    reports = [report("int8", 3.0), report("dynamic", 1.0), report("float32", 2.8)]
    choice = choose_mode(reports, "auto")
    assert choice.mode is Quantization.FLOAT32
    assert "dynamic not considered (tflite-runtime 2.14 cannot load it)" in choice.reason
    asked = choose_mode(reports, "dynamic")  # by name it is still published, with the warning
    assert asked.mode is Quantization.DYNAMIC
    assert "tflite-runtime 2.14 cannot load it" in asked.reason
    only_dynamic = [report("int8", 3.0, agreement=0.9), report("dynamic", 1.0)]
    none = choose_mode(only_dynamic, "auto")
    assert none.fastest_passing is None
    assert none.mode is Quantization.INT8  # kept for the record: it failed, nothing is published
    assert "no mode that every edge runtime loads passed the parity gate" in none.reason


def test_an_explicit_request_is_kept_and_a_faster_passing_mode_is_named() -> None:
    reports = [report("int8", 6.0), report("float32", 2.8)]
    choice = choose_mode(reports, "int8")
    assert choice.mode is Quantization.INT8
    assert choice.fastest_passing is Quantization.FLOAT32
    assert "float32 passed the parity gate and is faster" in choice.reason


def test_when_no_mode_passes_auto_keeps_the_closest_one_for_the_record() -> None:
    reports = [report("int8", 2.0, agreement=0.9), report("float16", 3.0, agreement=0.97)]
    choice = choose_mode(reports, "auto")
    assert choice.mode is Quantization.FLOAT16
    assert choice.fastest_passing is None
    assert "no mode passed the parity gate" in choice.reason


def test_a_requested_mode_that_was_not_measured_is_an_error() -> None:
    with pytest.raises(ValueError, match="float16 was not measured"):
        choose_mode([report("int8", 2.0)], "float16")


def test_a_training_request_may_ask_for_auto_and_the_job_keeps_it() -> None:
    from pydantic import ValidationError

    from cloud_hub.api.schemas import TrainingSpecBody
    from cloud_hub.jobs.training import spec_from_dict

    assert TrainingSpecBody(quantization="auto").quantization == "auto"
    with pytest.raises(ValidationError, match="auto"):
        TrainingSpecBody(quantization="int4")
    assert spec_from_dict({"quantization": "auto"}).quantization == "auto"
    assert spec_from_dict({"quantization": "float16"}).quantization is Quantization.FLOAT16
