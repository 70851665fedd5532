"""Wire messages: round trips, and refusal of every kind of bad payload with a clear reason."""

from __future__ import annotations

import json

import pytest

from shared.messages import (
    MAX_BATCH_ROWS,
    MAX_PAYLOAD_BYTES,
    AnomalyEvent,
    Desired,
    Heartbeat,
    MessageError,
    ModelRef,
    ModelState,
    Reported,
    ReportedModel,
    Status,
    TelemetryBatch,
    decode,
    encode,
    from_dict,
)


def _batch(**overrides: object) -> TelemetryBatch:
    fields: dict[str, object] = {
        "device_id": "pump-01",
        "epoch": "0123456789abcdef",
        "seq": 7,
        "channels": ["flow", "pressure"],
        "ts": [1000.0, 1000.1],
        "values": [[1.5, 2.0], [1.6, 2.1]],
    }
    fields.update(overrides)
    return from_dict(TelemetryBatch, fields)


def test_telemetry_batch_round_trips_through_json() -> None:
    batch = _batch()
    again = decode(TelemetryBatch, encode(batch))
    assert again == batch
    assert again.readings == 2
    assert again.v == 2 and again.epoch == "0123456789abcdef"


@pytest.mark.parametrize(
    "message",
    [
        AnomalyEvent(
            device_id="d1", epoch="0123456789abcdef", seq=3, ts=(10.0, 13.1), score=0.9,
            threshold=0.4,
            model=ModelRef(name="pump-ae", version=2), channels=["flow"], detected_at=13.2,
        ),
        Status(device_id="d1", state="online", at=5.0, agent_version="0.1.0"),
        Heartbeat(
            device_id="d1", at=9.0, uptime_s=3.0, rss_bytes=40_000_000, inference_us_p50=9.5,
            inference_us_p99=20.0, outbox_depth=3, oldest_unsent_age_s=0.5, drops=0,
        ),
        Reported(
            device_id="d1", model=ReportedModel(name="m", version=1, sha256="a" * 64),
            state=ModelState.ACTIVE, error=None, since=4.0,
        ),
        Desired(device_id="d1", model=ModelRef(name="m", version=1), issued_at=1.0),
    ],
)
def test_every_message_round_trips(message: object) -> None:
    cls = type(message)
    assert decode(cls, encode(message)) == message  # type: ignore[arg-type]


def test_unknown_schema_version_is_refused_by_name() -> None:
    payload = encode(_batch()).replace(b'"v":2', b'"v":3')
    with pytest.raises(MessageError, match=r"unsupported schema version v=3"):
        decode(TelemetryBatch, payload)


def test_truncated_payload_is_refused_as_invalid_json() -> None:
    payload = encode(_batch())
    with pytest.raises(MessageError, match="Invalid JSON"):
        decode(TelemetryBatch, payload[: len(payload) // 2])


@pytest.mark.parametrize(
    ("fragment", "replacement", "field"),
    [
        (b'"seq":7', b'"seq":"7"', "seq"),
        (b'"seq":7', b'"seq":-1', "seq"),
        (b'"device_id":"pump-01"', b'"device_id":"pump/01"', "device_id"),
        (b'[1.5,2.0]', b'["x",2.0]', "values.0.0"),
        (b'"ts":[1000.0,1000.1]', b'"ts":[1000.0]', "payload"),
    ],
)
def test_wrong_types_are_refused_naming_the_field(
    fragment: bytes, replacement: bytes, field: str
) -> None:
    payload = encode(_batch())
    assert fragment in payload
    with pytest.raises(MessageError) as info:
        decode(TelemetryBatch, payload.replace(fragment, replacement))
    assert field in str(info.value)


def test_extra_fields_are_refused() -> None:
    payload = encode(_batch())[:-1] + b',"firmware":"x"}'
    with pytest.raises(MessageError, match="firmware: unknown field"):
        decode(TelemetryBatch, payload)


def test_non_finite_values_are_refused() -> None:
    payload = encode(_batch()).replace(b"[1.5,2.0]", b"[NaN,2.0]")
    with pytest.raises(MessageError, match="finite"):
        decode(TelemetryBatch, payload)


def test_row_width_must_match_channels() -> None:
    with pytest.raises(ValueError, match="row 1 has 1 entries, expected 2"):
        _batch(values=[[1.0, 2.0], [3.0]])


def test_batch_with_too_many_rows_is_refused() -> None:
    n = MAX_BATCH_ROWS + 1
    with pytest.raises(MessageError, match=f"ts: Expected `array` of length <= {MAX_BATCH_ROWS}"):
        _batch(ts=[float(i) for i in range(n)], values=[[0.0, 0.0]] * n)


def test_oversized_payload_is_refused_before_parsing() -> None:
    payload = b"{" + b" " * MAX_PAYLOAD_BYTES + b"}"
    with pytest.raises(MessageError, match="exceeds the limit"):
        decode(TelemetryBatch, payload)


def test_anomaly_window_must_be_ordered() -> None:
    with pytest.raises(ValueError, match="before its start"):
        AnomalyEvent(
            device_id="d1", epoch="0123456789abcdef", seq=1, ts=(5.0, 4.0), score=1.0,
            threshold=0.5,
            model=ModelRef(name="m", version=1), channels=[], detected_at=6.0,
        )


def test_messages_are_frozen() -> None:
    batch = _batch()
    with pytest.raises(AttributeError, match="immutable"):
        batch.seq = 8  # type: ignore[misc]


def _drift(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "v": 2, "device_id": "pump-1", "epoch": "0123456789abcdef", "seq": 3, "floor": 1,
        "start": 10.0, "end": 20.0, "model": {"name": "m", "version": 1}, "state": "drift",
        "since": 15.0, "drifting": ["flow"], "windows": 10, "anomalies": 2,
        "channels": [{"name": "flow", "count": 100, "mean": 1.0, "std": 0.5, "shift": 3.2}],
    }
    return {**base, **changes}


def test_a_drift_summary_round_trips_and_refuses_what_it_does_not_know() -> None:
    from shared.messages import DriftState, DriftSummary, from_dict

    summary = from_dict(DriftSummary, _drift())
    assert summary.state is DriftState.DRIFT and summary.channels[0].shift == 3.2
    assert decode(DriftSummary, encode(summary)) == summary
    with pytest.raises(MessageError, match=r"channels\.0\.values: unknown field"):
        from_dict(DriftSummary, _drift(channels=[{"name": "flow", "count": 1,
                                                   "values": [1.0, 2.0]}]))
    with pytest.raises(MessageError, match="anomalies 11 exceed windows 10"):
        from_dict(DriftSummary, _drift(anomalies=11))
    with pytest.raises(MessageError, match="state"):
        from_dict(DriftSummary, _drift(state="melting"))


def test_a_drift_summary_has_a_size_cap_below_the_general_one() -> None:
    from shared.messages import MAX_DRIFT_BYTES, DriftSummary

    payload = json.dumps(_drift(channels=[{"name": "x" * 60, "count": 1}] * 10)).encode()
    padded = payload[:-1] + b" " * (MAX_DRIFT_BYTES + 1 - len(payload)) + b"}"
    with pytest.raises(MessageError, match=f"exceeds the limit of {MAX_DRIFT_BYTES}"):
        decode(DriftSummary, padded)


def test_training_statistics_must_be_consistent_with_their_shape() -> None:
    import numpy as np

    from shared.messages import DriftSummary, from_dict
    from shared.scatter import pack_upper

    stats = {"window": 2, "stride": 1, "channels": ["a", "b"], "windows": 50,
             "mean": [0.0] * 4, "scatter": pack_upper(np.eye(4)), "reading_count": 60,
             "reading_mean": [0.0, 0.0], "reading_m2": [1.0, 1.0]}
    assert from_dict(DriftSummary, _drift(training=stats)).training is not None
    with pytest.raises(MessageError, match="mean has 3 values, expected 4"):
        from_dict(DriftSummary, _drift(training={**stats, "mean": [0.0] * 3}))
    with pytest.raises(MessageError, match="scatter has"):
        from_dict(DriftSummary, _drift(training={**stats, "scatter": pack_upper(np.eye(3))}))
    with pytest.raises(MessageError, match="windows"):
        from_dict(DriftSummary, _drift(training={**stats, "windows": 1}))


def test_an_ack_and_a_heartbeat_leave_out_drift_until_there_is_some() -> None:
    from shared.messages import Ack, DriftBrief, DriftState, Heartbeat, StreamAck

    ack = Ack(device_id="d", epoch="0123456789abcdef", at=1.0)
    assert b"drift" not in encode(ack), "agents of earlier builds refuse an unknown field"
    with_drift = ack.replace(drift=StreamAck(watermark=2, top=2))
    assert decode(Ack, encode(with_drift)).drift == StreamAck(watermark=2, top=2)
    beat = Heartbeat(device_id="d", at=1.0, uptime_s=1.0, rss_bytes=1, outbox_depth=0,
                     oldest_unsent_age_s=0.0, drops=0)
    assert b"drift" not in encode(beat) and b'"v":2' in encode(beat)
    brief = DriftBrief(state=DriftState.DRIFT, since=5.0, channels=["flow"])
    assert decode(Heartbeat, encode(beat.replace(drift=brief))).drift == brief
