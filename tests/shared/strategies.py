"""Hypothesis strategies for the wire protocol: every message, manifest and topic part.

Valid values only: the tests that need invalid input derive it from these (mutations) or use
arbitrary bytes and text.
"""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from shared.manifest import (
    ChunkTable,
    InputSpec,
    Manifest,
    Normalization,
    ParitySummary,
    Quantization,
    ScoreSpec,
)
from shared.messages import (
    MAX_SEQ,
    Ack,
    AnomalyEvent,
    Desired,
    DeviceStatus,
    Heartbeat,
    HubStatus,
    ModelRef,
    ModelState,
    Reported,
    ReportedModel,
    Status,
    StreamAck,
    TelemetryBatch,
)

MAX_FLOAT = 1.7976931348623157e308

ids = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)
epochs = st.binary(min_size=8, max_size=8).map(bytes.hex)
hex64 = st.binary(min_size=32, max_size=32).map(bytes.hex)  # faster than a regex
finite = st.floats(allow_nan=False, allow_infinity=False)
non_negative = st.floats(min_value=0.0, max_value=MAX_FLOAT)
seconds = non_negative
counts = st.integers(min_value=0, max_value=2**63 - 1)
seqs = st.integers(min_value=0, max_value=MAX_SEQ)
versions = st.integers(min_value=1, max_value=2**31 - 1)
channel = st.text(min_size=1, max_size=64)
channels = st.lists(channel, min_size=1, max_size=8, unique=True)

model_refs = st.builds(ModelRef, name=ids, version=versions)
reported_models = st.builds(ReportedModel, name=ids, version=versions,
                            sha256=st.none() | hex64)


@st.composite
def telemetry_batches(draw: st.DrawFn) -> TelemetryBatch:
    names = draw(channels)
    rows = draw(st.integers(min_value=1, max_value=6))
    seq = draw(seqs)
    return TelemetryBatch(
        device_id=draw(ids), epoch=draw(epochs), seq=seq,
        floor=draw(st.integers(min_value=0, max_value=seq)), channels=names,
        ts=draw(st.lists(seconds, min_size=rows, max_size=rows)),
        values=draw(st.lists(st.lists(finite, min_size=len(names), max_size=len(names)),
                             min_size=rows, max_size=rows)),
    )


@st.composite
def anomaly_events(draw: st.DrawFn) -> AnomalyEvent:
    start, end = sorted(draw(st.tuples(seconds, seconds)))
    seq = draw(seqs)
    return AnomalyEvent(
        device_id=draw(ids), epoch=draw(epochs), seq=seq,
        floor=draw(st.integers(min_value=0, max_value=seq)), ts=(start, end),
        score=draw(finite), threshold=draw(finite), model=draw(model_refs),
        channels=draw(st.lists(channel, max_size=8)), detected_at=draw(seconds),
    )


@st.composite
def stream_acks(draw: st.DrawFn) -> StreamAck:
    watermark = draw(st.integers(min_value=-1, max_value=MAX_SEQ))
    return StreamAck(watermark=watermark,
                     top=draw(st.integers(min_value=watermark, max_value=MAX_SEQ)))


messages = st.one_of(
    telemetry_batches(),
    anomaly_events(),
    st.builds(Status, device_id=ids, state=st.sampled_from(DeviceStatus), at=seconds,
              agent_version=st.text(max_size=64)),
    st.builds(HubStatus, device_id=ids, state=st.sampled_from(DeviceStatus),
              session=st.binary(min_size=4, max_size=32).map(bytes.hex), at=seconds),
    st.builds(Heartbeat, device_id=ids, at=seconds, uptime_s=non_negative, rss_bytes=counts,
              inference_us_p50=st.none() | non_negative,
              inference_us_p99=st.none() | non_negative, outbox_depth=counts,
              oldest_unsent_age_s=non_negative, drops=counts, reconnects=counts,
              bad_readings=counts),
    st.builds(Reported, device_id=ids, model=st.none() | reported_models,
              state=st.sampled_from(ModelState), error=st.none() | st.text(max_size=2000),
              since=seconds, active=st.none() | reported_models,
              threshold=st.none() | finite),
    st.builds(Desired, device_id=ids, model=st.none() | model_refs,
              config=st.dictionaries(st.text(max_size=16),
                                     st.one_of(finite, st.integers(-2**63, 2**63 - 1),
                                               st.text(max_size=16), st.booleans()),
                                     max_size=4),
              issued_at=seconds, rollout_id=st.none() | counts),
    st.builds(Ack, device_id=ids, epoch=epochs, telemetry=stream_acks(),
              anomalies=stream_acks(), at=seconds),
)


@st.composite
def manifests(draw: st.DrawFn) -> Manifest:
    names = draw(st.lists(channel, min_size=1, max_size=4))
    chunk_size = draw(st.integers(min_value=1024, max_value=8 * 1024 * 1024))
    count = draw(st.integers(min_value=1, max_value=5))
    size = draw(st.integers(min_value=(count - 1) * chunk_size + 1, max_value=count * chunk_size))
    return Manifest(
        name=draw(ids), version=draw(st.integers(min_value=1, max_value=10**6)),
        release=draw(st.integers(min_value=1, max_value=10**6)),
        created_at=draw(finite), quantization=draw(st.sampled_from(Quantization)),
        size=size, sha256=draw(hex64), chunk_size=chunk_size,
        chunks=ChunkTable(count=count, sha256=draw(st.lists(hex64, min_size=count,
                                                            max_size=count))),
        input=InputSpec(window=draw(st.integers(min_value=1, max_value=4096)), channels=names,
                        dtype=draw(st.sampled_from(["float32", "int8", "uint8"])),
                        layout=draw(st.sampled_from(["flat", "sequence"])),
                        stride=draw(st.integers(min_value=1, max_value=64))),
        normalization=Normalization(
            method=draw(st.sampled_from(["zscore", "minmax"])),
            center=draw(st.lists(finite, min_size=len(names), max_size=len(names))),
            scale=draw(st.lists(st.floats(min_value=1e-300, max_value=MAX_FLOAT),
                                min_size=len(names), max_size=len(names)))),
        score=ScoreSpec(method=draw(st.sampled_from(["mse", "mae"])),
                        smoothing=draw(st.integers(min_value=1, max_value=1000))),
        threshold=draw(finite),
        parity=ParitySummary(
            decision_agreement=draw(st.floats(min_value=0, max_value=1)),
            windows=draw(st.integers(min_value=0, max_value=10**9)),
            score_correlation=draw(st.none() | st.floats(min_value=-1, max_value=1)),
            max_score_error=draw(st.none() | non_negative),
            mean_score_error=draw(st.none() | non_negative)),
        float_size=draw(st.integers(min_value=1, max_value=10**8)),
        key_id=draw(st.binary(min_size=4, max_size=32).map(bytes.hex)),
        signature=draw(st.text(max_size=256)),
    )


json_values: st.SearchStrategy[Any] = st.recursive(
    st.none() | st.booleans() | st.integers() | finite | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=12,
)
