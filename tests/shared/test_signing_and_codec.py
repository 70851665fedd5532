"""Manifest signing and model chunking: any tampering is caught, with a reason."""

from __future__ import annotations

import base64
import json
import os
import threading
from pathlib import Path

import pytest

from shared.codec import ChunkError, reassemble, sha256_hex, split
from shared.manifest import (
    ChunkTable,
    InputSpec,
    Manifest,
    ManifestError,
    Normalization,
    ParitySummary,
    Quantization,
    ScoreSpec,
    parse_manifest,
)
from shared.signing import SignatureError, SigningKey, generate_signing_key, verify_manifest

MODEL = os.urandom(150_000)
CHUNK = 64 * 1024


def _manifest(data: bytes = MODEL) -> Manifest:
    chunks = split(data, CHUNK)
    return Manifest(
        name="pump-ae", version=1, release=1, created_at=1_700_000_000.0, quantization="int8",
        size=len(data), sha256=sha256_hex(data), chunk_size=CHUNK,
        chunks=ChunkTable.of(chunks),
        input=InputSpec(window=32, channels=["a", "b"]),
        normalization=Normalization(method="zscore", center=[0.0, 1.0], scale=[1.0, 2.0]),
        score=ScoreSpec(), threshold=0.25,
        parity=ParitySummary(decision_agreement=0.995, windows=1000),
        float_size=len(data) * 3, key_id="0" * 16,
    )


def test_signed_manifest_verifies_after_a_round_trip() -> None:
    key = generate_signing_key()
    signed = key.sign(_manifest())
    again = parse_manifest(signed.to_bytes())
    verify_manifest(again, {key.key_id: key.public})
    assert again.key_id == key.key_id


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("threshold", 99.0),
        ("version", 2),
        ("release", 7),
        ("sha256", "b" * 64),
        ("quantization", Quantization.FLOAT32),
    ],
)
def test_tampered_field_breaks_the_signature(field: str, value: object) -> None:
    key = generate_signing_key()
    tampered = key.sign(_manifest()).replace(**{field: value})
    with pytest.raises(SignatureError, match="does not verify"):
        verify_manifest(tampered, {key.key_id: key.public})


def test_wrong_key_with_the_same_id_does_not_verify() -> None:
    key, other = generate_signing_key(), generate_signing_key()
    signed = key.sign(_manifest())
    with pytest.raises(SignatureError, match="does not verify"):
        verify_manifest(signed, {key.key_id: other.public})


def test_unknown_key_id_is_refused() -> None:
    key, other = generate_signing_key(), generate_signing_key()
    with pytest.raises(SignatureError, match="unknown key id"):
        verify_manifest(key.sign(_manifest()), {other.key_id: other.public})


def test_truncated_signature_is_refused() -> None:
    key = generate_signing_key()
    signed = key.sign(_manifest())
    short = base64.b64encode(base64.b64decode(signed.signature)[:40]).decode()
    with pytest.raises(SignatureError, match="40 bytes, expected 64"):
        verify_manifest(signed.replace(**{"signature": short}), {key.key_id: key.public})


def test_signing_key_persists_with_private_permissions(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "hub.pem"
    first = SigningKey.load_or_create(path)
    assert path.stat().st_mode & 0o777 == 0o600
    assert SigningKey.load_or_create(path).key_id == first.key_id


def test_signing_key_made_at_once_by_several_is_one_key(tmp_path: Path) -> None:
    """Hub processes started together on one key volume each make the key the first time:
    every one of them ends with the key the file holds, and no temporary file is left."""
    path = tmp_path / "keys" / "signing-key.pem"
    def make(barrier: threading.Barrier, made: list[str]) -> None:
        barrier.wait()
        made.append(SigningKey.load_or_create(path).key_id)

    for _ in range(5):
        path.unlink(missing_ok=True)
        barrier = threading.Barrier(8)
        made: list[str] = []
        threads = [threading.Thread(target=make, args=(barrier, made)) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(made) == 8
        assert set(made) == {SigningKey.load(path).key_id}
        assert [p.name for p in path.parent.iterdir()] == ["signing-key.pem"]


def test_signing_key_save_without_replace_leaves_the_file(tmp_path: Path) -> None:
    path = tmp_path / "signing-key.pem"
    first = SigningKey.load_or_create(path)
    with pytest.raises(FileExistsError):
        generate_signing_key().save(path, replace=False)
    assert SigningKey.load(path).key_id == first.key_id
    second = generate_signing_key()
    second.save(path)  # a rotation's save replaces
    assert SigningKey.load(path).key_id == second.key_id
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["signing-key.pem"]


def test_manifest_with_inconsistent_chunk_count_is_refused() -> None:
    data = _manifest().to_dict()
    data["chunks"]["count"] = 2
    data["chunks"]["sha256"] = data["chunks"]["sha256"][:2]
    with pytest.raises(ManifestError, match="needs 3"):
        parse_manifest(json.dumps(data))


def test_manifest_of_unknown_version_is_refused() -> None:
    raw = _manifest().to_bytes().replace(b'"v": 2', b'"v": 9')
    with pytest.raises(ManifestError, match="unsupported manifest version"):
        parse_manifest(raw)


def test_a_v1_manifest_without_a_release_counter_is_refused_naming_the_version() -> None:
    data = _manifest().to_dict()
    del data["release"]
    data["v"] = 1
    with pytest.raises(ManifestError, match="manifest version v=1; this build understands v=2"):
        parse_manifest(json.dumps(data))
    data["v"] = 2
    with pytest.raises(ManifestError, match="release"):
        parse_manifest(json.dumps(data))
    data["release"] = 0
    with pytest.raises(ManifestError, match="release"):
        parse_manifest(json.dumps(data))


def test_a_manifest_without_channel_scale_keeps_the_bytes_it_had_before_the_field() -> None:
    # Agents that predate score.channel_scale refuse unknown fields: a manifest that does not use
    # it must not carry it, and its signed bytes must not change.
    manifest = _manifest()
    assert set(manifest.to_dict()["score"]) == {"method", "smoothing"}
    assert b"channel_scale" not in manifest.to_bytes()
    key = generate_signing_key()
    verify_manifest(parse_manifest(key.sign(manifest).to_bytes()), {key.key_id: key.public})


def test_a_manifest_with_channel_scale_round_trips_and_its_signature_covers_it() -> None:
    key = generate_signing_key()
    signed = key.sign(_manifest().replace(score=ScoreSpec(channel_scale=[0.5, 2.0])))
    again = parse_manifest(signed.to_bytes())
    assert again.score.channel_scale == [0.5, 2.0]
    verify_manifest(again, {key.key_id: key.public})
    with pytest.raises(SignatureError, match="does not verify"):
        verify_manifest(again.replace(score=ScoreSpec(channel_scale=[0.5, 20.0])),
                        {key.key_id: key.public})


@pytest.mark.parametrize(
    ("scale", "message"),
    [
        ([1.0], "score.channel_scale has 1 scales for 2 channels"),
        ([1.0, 0.0], "score.channel_scale"),
        ([1.0, -2.0], "score.channel_scale"),
        ([1.0, "2"], "score.channel_scale"),
        ([], "score.channel_scale"),
    ],
)
def test_a_bad_channel_scale_is_refused_naming_the_field(scale: object, message: str) -> None:
    data = _manifest().to_dict()
    data["score"]["channel_scale"] = scale
    with pytest.raises(ManifestError, match=message):
        parse_manifest(json.dumps(data))


def test_chunks_reassemble_to_the_original() -> None:
    m = _manifest()
    chunks = split(MODEL, CHUNK)
    assert [len(c) for c in chunks] == [CHUNK, CHUNK, len(MODEL) - 2 * CHUNK]
    data = reassemble(chunks, chunk_hashes=m.chunks.sha256, size=m.size, sha256=m.sha256)
    assert data == MODEL


def test_corrupt_chunk_is_named() -> None:
    m = _manifest()
    chunks = split(MODEL, CHUNK)
    # Flip the first byte's bits: setting it to a fixed value left random data unchanged once
    # in 256 runs (MODEL is os.urandom), and the test then failed.
    chunks[1] = bytes([chunks[1][0] ^ 0xFF]) + chunks[1][1:]
    with pytest.raises(ChunkError, match="chunk 1: sha256"):
        reassemble(chunks, chunk_hashes=m.chunks.sha256, size=m.size, sha256=m.sha256)


def test_wrong_file_hash_is_caught_even_when_chunks_match() -> None:
    m = _manifest()
    chunks = split(MODEL, CHUNK)
    with pytest.raises(ChunkError, match="model file sha256"):
        reassemble(chunks, chunk_hashes=m.chunks.sha256, size=m.size, sha256="c" * 64)


def test_missing_chunk_is_caught() -> None:
    m = _manifest()
    with pytest.raises(ChunkError, match="got 2 chunks"):
        reassemble(split(MODEL, CHUNK)[:2], chunk_hashes=m.chunks.sha256, size=m.size,
                   sha256=m.sha256)


def test_a_loaded_key_is_reused_and_every_signature_is_still_checked() -> None:
    from shared.keys import SignedParts
    from shared.signing import public_key_of, verify_parts

    key = generate_signing_key()
    message = b"model manifest bytes"
    signature = base64.b64decode(key.sign_bytes(message))
    assert public_key_of(key.public_raw) is public_key_of(key.public_raw)
    assert verify_parts(SignedParts(key.public_raw, signature, message))
    # the same loaded key, a good check just before: a changed message or signature still fails
    assert not verify_parts(SignedParts(key.public_raw, signature, message + b"!"))
    assert not verify_parts(SignedParts(key.public_raw, bytes(64), message))
    other = generate_signing_key()
    assert not verify_parts(SignedParts(other.public_raw, signature, message))
    with pytest.raises(ValueError):
        public_key_of(b"short")
