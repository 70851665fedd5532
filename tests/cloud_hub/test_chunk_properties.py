"""Model chunks from the hub's registry to an agent's store, for any size and chunk size.

The hub cuts a model into the chunks its signed manifest lists (``build_manifest``); the agent's
``ModelStore`` takes them in any order, any number of times, refuses any chunk that is not the
one listed, and assembles exactly the bytes the hub had. The model bytes here are arbitrary:
chunking never looks inside them.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud_hub.registry.records import build_manifest
from cloud_hub.training.artifact import ModelArtifact, ParityReport, TrainingSpec
from edge_agent.models.store import ModelStore
from shared.codec import ChunkError, split
from shared.manifest import (
    InputSpec,
    Manifest,
    Normalization,
    Quantization,
    ScoreSpec,
    manifest_from_dict,
)
from shared.signing import generate_signing_key, verify_manifest

pytestmark = [pytest.mark.hub]
KEY = generate_signing_key()


def _artifact(model: bytes) -> ModelArtifact:
    parity = ParityReport(
        quantization=Quantization.INT8, decision_agreement=1.0, windows=10,
        score_correlation=1.0, max_score_error=0.0, mean_score_error=0.0,
        size_bytes=len(model), float_size_bytes=len(model), us_per_window=1.0,
        runtime="none", min_agreement=0.99)
    return ModelArtifact(
        spec=TrainingSpec(), channels=["a"], input=InputSpec(window=4, channels=["a"]),
        normalization=Normalization(method="zscore", center=[0.0], scale=[1.0]),
        score=ScoreSpec(), threshold=1.0, threshold_method="fixed", tflite=model,
        float_size=len(model), parity=parity, training_rows=10, training_windows=7)


def _released(model: bytes, chunk_size: int) -> Manifest:
    """The manifest the hub signs for release 1 of this model (as ``sign_release`` does)."""
    body = build_manifest(_artifact(model), name="prop-ae", version=1, chunk_size=chunk_size,
                          created_at=1.0)
    return KEY.sign(manifest_from_dict({**body, "release": 1, "key_id": KEY.key_id}))


@given(model=st.binary(min_size=1, max_size=20_000), chunk_size=st.integers(1024, 9000),
       order=st.randoms(use_true_random=False), repeats=st.integers(0, 3))
def test_the_agent_assembles_exactly_what_the_hub_chunked(
    model: bytes, chunk_size: int, order: object, repeats: int
) -> None:
    manifest = _released(model, chunk_size)
    verify_manifest(manifest, {KEY.key_id: KEY.public})
    chunks = split(model, chunk_size)
    assert manifest.chunks.count == len(chunks) and manifest.size == len(model)
    deliveries = list(enumerate(chunks)) + list(enumerate(chunks))[:repeats]  # resent ones
    order.shuffle(deliveries)  # type: ignore[attr-defined]
    with tempfile.TemporaryDirectory() as folder:
        store = ModelStore(Path(folder), {KEY.key_id: KEY.public_raw})
        for index, data in deliveries:
            store.put_chunk(manifest, index, data)
        assert store.missing_chunks(manifest) == []
        assert store.assemble(manifest).read_bytes() == model


@given(model=st.binary(min_size=1, max_size=8000), chunk_size=st.integers(1024, 4000),
       which=st.integers(min_value=0), flip=st.integers(1, 255),
       cut=st.integers(min_value=0))
def test_the_agent_refuses_any_chunk_that_is_not_the_listed_one(
    model: bytes, chunk_size: int, which: int, flip: int, cut: int
) -> None:
    manifest = _released(model, chunk_size)
    chunks = split(model, chunk_size)
    index = which % len(chunks)
    flipped = bytearray(chunks[index])
    flipped[cut % len(flipped)] ^= flip
    with tempfile.TemporaryDirectory() as folder:
        store = ModelStore(Path(folder), {KEY.key_id: KEY.public_raw})
        for bad in (bytes(flipped), chunks[index][:-1], chunks[index] + b"\0"):
            with pytest.raises(ChunkError, match=f"chunk {index}"):
                store.put_chunk(manifest, index, bad)
        with pytest.raises(ChunkError, match="outside"):
            store.put_chunk(manifest, len(chunks), chunks[index])
        assert index in store.missing_chunks(manifest)
