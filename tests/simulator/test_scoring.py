"""Detections against ground truth: overlap matching, precision/recall/F1, latency to commit."""

from __future__ import annotations

import pytest

from simulator.scoring import Event, GroundTruth, latency_summary, score_detections


def _fault(device: str, start: float, end: float, kind: str = "spike") -> GroundTruth:
    return GroundTruth(device_id=device, kind=kind, start=start, end=end)


def _event(device: str, seq: int, a: float, b: float, stored: float | None = None) -> Event:
    return Event(device_id=device, seq=seq, ts_start=a, ts_end=b, stored_at=stored)


def test_event_overlapping_a_fault_detects_it_with_latency_to_commit() -> None:
    faults = [_fault("d1", 100.0, 110.0)]
    events = [_event("d1", 1, 97.0, 100.5, stored=101.25), _event("d1", 2, 99.0, 103.0, 104.0)]
    score = score_detections(faults, events)
    assert score.faults_detected == 1
    assert score.false_alarms == 0
    assert score.precision == 1.0 and score.recall == 1.0 and score.f1 == 1.0
    assert score.outcomes[0].latency_ms == pytest.approx(1250.0)


def test_event_on_another_device_is_a_false_alarm() -> None:
    score = score_detections([_fault("d1", 100.0, 110.0)], [_event("d2", 1, 101.0, 104.0, 105.0)])
    assert score.faults_detected == 0
    assert score.false_alarms == 1
    assert score.precision == 0.0 and score.recall == 0.0 and score.f1 == 0.0


def test_window_ending_before_the_fault_or_starting_at_its_end_does_not_match() -> None:
    faults = [_fault("d1", 100.0, 110.0)]
    events = [_event("d1", 1, 90.0, 99.99, 100.0), _event("d1", 2, 110.0, 113.0, 114.0)]
    score = score_detections(faults, events)
    assert score.faults_detected == 0
    assert score.false_alarms == 2


def test_precision_recall_f1_count_events_and_faults() -> None:
    faults = [_fault("d1", 100.0, 110.0), _fault("d1", 200.0, 210.0), _fault("d2", 100.0, 105.0)]
    events = [
        _event("d1", 1, 101.0, 104.0, 105.0),
        _event("d1", 2, 105.0, 108.0, 108.5),
        _event("d2", 1, 150.0, 153.0, 153.5),  # false alarm
        _event("d2", 2, 103.0, 106.0, 107.0),
    ]
    score = score_detections(faults, events)
    assert score.faults_injected == 3
    assert score.faults_detected == 2
    assert score.true_events == 3
    assert score.false_alarms == 1
    assert score.precision == pytest.approx(0.75)
    assert score.recall == pytest.approx(2 / 3)
    assert score.f1 == pytest.approx(2 * 0.75 * (2 / 3) / (0.75 + 2 / 3))
    assert sorted(score.latencies_ms) == pytest.approx([5000.0, 7000.0])
    kinds = score.by_kind()
    assert kinds["spike"]["injected"] == 3 and kinds["spike"]["detected"] == 2


def test_latency_is_unknown_when_the_event_has_no_commit_time() -> None:
    score = score_detections([_fault("d1", 0.0, 5.0)], [_event("d1", 1, 1.0, 2.0, None)])
    assert score.faults_detected == 1
    assert score.outcomes[0].latency_ms is None
    assert latency_summary(score.latencies_ms) == {"p50": None, "p95": None, "max": None}


def test_latency_summary_percentiles() -> None:
    summary = latency_summary([float(x) for x in range(1, 101)])
    assert summary["p50"] == pytest.approx(50.5)
    assert summary["p95"] == pytest.approx(95.05)
    assert summary["max"] == 100.0


def test_event_from_api_row() -> None:
    row = {"device_id": "d1", "seq": 4, "ts_start": 1.0, "ts_end": 2.0, "score": 0.5,
           "threshold": 0.2, "stored_at": 3.5, "model_name": "m", "model_version": 1,
           "channels": ["a"], "detected_at": 2.1}
    event = Event.from_api(row)
    assert (event.device_id, event.seq, event.stored_at, event.score) == ("d1", 4, 3.5, 0.5)


def test_fault_ending_before_it_starts_is_refused() -> None:
    with pytest.raises(ValueError, match="before it starts"):
        score_detections([_fault("d1", 5.0, 5.0)], [])
