"""Properties of the wire protocol, checked by Hypothesis on generated input.

- every valid message survives encode -> decode unchanged; any byte string either decodes or
  raises MessageError, nothing else;
- topics: build -> parse gives the parts back; parsing any string raises TopicError or names
  parts that build the same topic again;
- a manifest's canonical bytes do not depend on key order, and change with every field but
  the signature;
- chunks: split -> reassemble gives the file back for any size and chunk size, and a changed
  chunk is refused.
"""

from __future__ import annotations

import json
import random
import re
from typing import Any

import msgspec
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from shared.codec import ChunkError, reassemble, sha256_hex, split
from shared.manifest import (
    Manifest,
    ManifestError,
    canonical_bytes,
    manifest_from_dict,
    parse_manifest,
)
from shared.messages import (
    Ack,
    AnomalyEvent,
    Desired,
    Frozen,
    Heartbeat,
    HubStatus,
    MessageError,
    Reported,
    Status,
    TelemetryBatch,
    decode,
    encode,
)
from shared.topics import DeviceTopic, ParsedTopic, TopicError, Topics
from tests.shared.strategies import epochs, ids, json_values, manifests, messages

MESSAGE_TYPES: list[type[Frozen]] = [TelemetryBatch, AnomalyEvent, Status, HubStatus, Heartbeat,
                                     Reported, Desired, Ack]
prefixes = st.sampled_from(["edgeloop/v1", "plant-a/edgeloop", "x"])
_VALID_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")


# -- messages --------------------------------------------------------------------------------

@given(messages)
def test_every_valid_message_survives_encode_and_decode(message: Frozen) -> None:
    assert decode(type(message), encode(message)) == message


@pytest.mark.parametrize("kind", MESSAGE_TYPES, ids=lambda k: k.__name__)
@given(payload=st.binary(max_size=300))
def test_any_bytes_decode_or_raise_message_error(kind: type[Frozen], payload: bytes) -> None:
    try:
        decode(kind, payload)
    except MessageError:
        pass


@pytest.mark.parametrize("kind", MESSAGE_TYPES, ids=lambda k: k.__name__)
@given(data=json_values)
def test_any_json_decodes_or_raises_message_error(kind: type[Frozen], data: Any) -> None:
    try:
        decode(kind, json.dumps(data).encode())
    except MessageError:
        pass


def _check_decoded(message: Frozen) -> None:
    """What a decoder accepts is a valid message: its ids match their patterns (all of the
    string: Python's $ also matches before a final newline), and it encodes back to itself."""
    device_id = getattr(message, "device_id", None)
    assert device_id is None or _VALID_ID.fullmatch(device_id), device_id
    epoch = getattr(message, "epoch", None)
    assert epoch is None or re.fullmatch(r"[0-9a-f]{16}", epoch), epoch
    assert decode(type(message), encode(message)) == message


@given(message=messages, data=st.data())
def test_a_valid_message_with_one_field_changed_decodes_or_names_the_problem(
    message: Frozen, data: st.DataObject
) -> None:
    fields = msgspec.to_builtins(message)
    texts = sorted(k for k, v in fields.items() if isinstance(v, str))
    if texts and data.draw(st.booleans()):  # a string that only looks right: "pump-1\n"
        key = data.draw(st.sampled_from(texts))
        fields[key] = fields[key] + data.draw(st.sampled_from(["\n", "\r\n", " ", "\x00"]))
    else:
        key = data.draw(st.sampled_from(sorted(fields)))
        fields[key] = data.draw(json_values)
    try:
        decoded = decode(type(message), json.dumps(fields).encode())
    except MessageError as exc:
        assert str(exc).startswith(f"{type(message).__name__}: ")
    else:
        _check_decoded(decoded)


@given(message=messages, position=st.integers(min_value=0), byte=st.integers(0, 255))
def test_a_corrupted_payload_decodes_or_raises_message_error(
    message: Frozen, position: int, byte: int
) -> None:
    payload = bytearray(encode(message))
    payload[position % len(payload)] = byte
    try:
        decoded = decode(type(message), bytes(payload))
    except MessageError:
        pass
    else:
        _check_decoded(decoded)


# -- topics ----------------------------------------------------------------------------------

@given(prefix=prefixes, device=ids, which=st.sampled_from(DeviceTopic))
def test_device_topics_parse_back_to_their_parts(prefix: str, device: str,
                                                  which: DeviceTopic) -> None:
    topics = Topics(prefix)
    parsed = topics.parse(topics.device(device, which))
    assert parsed == ParsedTopic(kind=which.value, device_id=device)


@given(prefix=prefixes, name=ids, version=st.integers(min_value=1, max_value=10**12),
       index=st.integers(min_value=0, max_value=10**6))
def test_model_and_trust_topics_parse_back_to_their_parts(prefix: str, name: str,
                                                          version: int, index: int) -> None:
    topics = Topics(prefix)
    assert topics.parse(topics.manifest(name, version)) == ParsedTopic(
        kind="manifest", model_name=name, model_version=version)
    assert topics.parse(topics.chunk(name, version, index)) == ParsedTopic(
        kind="chunk", model_name=name, model_version=version, chunk_index=index)
    assert topics.parse(topics.trust(version)).model_version == version
    assert topics.parse(topics.hub_status(name)).device_id == name


def _rebuilt(topics: Topics, parsed: ParsedTopic) -> str:
    if parsed.kind == "manifest":
        assert parsed.model_name is not None and parsed.model_version is not None
        return topics.manifest(parsed.model_name, parsed.model_version)
    if parsed.kind == "chunk":
        assert parsed.model_name and parsed.model_version and parsed.chunk_index is not None
        return topics.chunk(parsed.model_name, parsed.model_version, parsed.chunk_index)
    if parsed.kind == "trust":
        assert parsed.model_version is not None
        return topics.trust(parsed.model_version)
    assert parsed.device_id is not None
    if parsed.kind == "hub_status":
        return topics.hub_status(parsed.device_id)
    return topics.device(parsed.device_id, parsed.kind)


# Levels of a topic, typed by the slot they go in, each near its edge cases.
_ID_LEVELS = st.one_of(ids, ids.map(lambda s: s + "\n"), st.text(max_size=8),
                       st.sampled_from(["", "+", "#", "a b", "a/b"]))
_NUMBER_LEVELS = st.one_of(st.integers(0, 10**6).map(str), st.text(max_size=4),
                           st.sampled_from(["\u00b2", "\u0661\u0662", "01", "-1", "", "1\n",
                                            "+1", " 1", "1_0"]))
_STREAM_LEVELS = st.one_of(st.sampled_from([d.value for d in DeviceTopic]),
                           st.text(max_size=10))
_SHAPES = [("devices/{}/{}", (_ID_LEVELS, _STREAM_LEVELS)),
           ("models/{}/{}/manifest", (_ID_LEVELS, _NUMBER_LEVELS)),
           ("models/{}/{}/chunks/{}", (_ID_LEVELS, _NUMBER_LEVELS, _NUMBER_LEVELS)),
           ("trust/{}", (_NUMBER_LEVELS,)), ("hub/{}/status", (_ID_LEVELS,))]
@st.composite
def _topics(draw: st.DrawFn, prefix: str) -> str:
    """Topics of the edgeloop shapes with arbitrary levels in them, and arbitrary text."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.text(max_size=80))
    shape, slots = draw(st.sampled_from(_SHAPES))
    return f"{prefix}/" + shape.format(*(draw(slot) for slot in slots))


@given(prefix=prefixes, data=st.data())
def test_parsing_any_topic_raises_topic_error_or_names_valid_parts(
    prefix: str, data: st.DataObject
) -> None:
    topics = Topics(prefix)
    text = data.draw(_topics(prefix))
    try:
        parsed = topics.parse(text)
    except TopicError:
        return
    for part in (parsed.device_id, parsed.model_name):
        assert part is None or _VALID_ID.fullmatch(part), parsed
    for number in (parsed.model_version, parsed.chunk_index):
        assert number is None or (isinstance(number, int) and number >= 0), parsed
    assert _rebuilt(topics, parsed) == text  # parts that name this very topic


# -- manifest canonical bytes ----------------------------------------------------------------

def _shuffled(value: Any, rng: random.Random) -> Any:
    if isinstance(value, dict):
        items = list(value.items())
        rng.shuffle(items)
        return {k: _shuffled(v, rng) for k, v in items}
    if isinstance(value, list):
        return [_shuffled(v, rng) for v in value]
    return value


@given(manifest=manifests(), seed=st.integers())
def test_canonical_bytes_do_not_depend_on_key_order(manifest: Manifest, seed: int) -> None:
    data = manifest.to_dict()
    again = manifest_from_dict(_shuffled(data, random.Random(seed)))
    assert canonical_bytes(again) == canonical_bytes(manifest)
    reordered = json.dumps(_shuffled(data, random.Random(seed + 1))).encode()
    assert canonical_bytes(parse_manifest(reordered)) == canonical_bytes(manifest)


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _leaves(v, (*path, k))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _leaves(v, (*path, i))]
    return [path]


def _set(data: Any, path: tuple[Any, ...], value: Any) -> None:
    for part in path[:-1]:
        data = data[part]
    data[path[-1]] = value


def _changed(value: Any) -> Any:
    """Another value of the same kind, as close as possible (so that it stays valid)."""
    if value is None:
        return 0.5  # every optional number of a manifest may be 0.5
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1 if value < 2**31 else value - 1
    if isinstance(value, float):
        return value / 2 if value > 1e-300 or value < -1e-300 else 0.5
    if isinstance(value, str):
        return value[:-1] + ("0" if value[-1:] != "0" else "1") if value else "x"
    return value


@given(manifest=manifests(), data=st.data())
def test_canonical_bytes_change_when_any_signed_field_changes(
    manifest: Manifest, data: st.DataObject
) -> None:
    original = manifest.to_dict()
    path = data.draw(st.sampled_from(_leaves(original)))
    changed = json.loads(json.dumps(original))
    _set(changed, path, _changed(_get(original, path)))
    try:
        other = manifest_from_dict(changed)
    except ManifestError:
        assume(False)  # the change made it invalid (a size that needs another chunk count)
        return
    if path == ("signature",):
        assert canonical_bytes(other) == canonical_bytes(manifest)
    else:
        assert canonical_bytes(other) != canonical_bytes(manifest), path


def _get(data: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


@given(payload=st.binary(max_size=400))
def test_any_bytes_parse_as_a_manifest_or_raise_manifest_error(payload: bytes) -> None:
    try:
        parse_manifest(payload)
    except ManifestError:
        pass


# -- chunks ----------------------------------------------------------------------------------

@given(data=st.binary(min_size=1, max_size=5000), chunk_size=st.integers(1, 6000))
def test_split_then_reassemble_gives_the_file_back(data: bytes, chunk_size: int) -> None:
    chunks = split(data, chunk_size)
    assert len(chunks) == -(-len(data) // chunk_size)
    assert all(len(c) == chunk_size for c in chunks[:-1]) and 0 < len(chunks[-1]) <= chunk_size
    hashes = [sha256_hex(c) for c in chunks]
    assert reassemble(chunks, chunk_hashes=hashes, size=len(data),
                      sha256=sha256_hex(data)) == data


@given(data=st.binary(min_size=1, max_size=3000), chunk_size=st.integers(1, 1000),
       which=st.integers(min_value=0), flip=st.integers(1, 255))
def test_a_changed_chunk_is_refused(data: bytes, chunk_size: int, which: int,
                                    flip: int) -> None:
    chunks = split(data, chunk_size)
    hashes = [sha256_hex(c) for c in chunks]
    i = which % len(chunks)
    bad = bytearray(chunks[i])
    bad[0] ^= flip
    with pytest.raises(ChunkError, match=f"chunk {i}"):
        reassemble([*chunks[:i], bytes(bad), *chunks[i + 1:]], chunk_hashes=hashes,
                   size=len(data), sha256=sha256_hex(data))


def test_epoch_and_id_strategies_match_the_wire_patterns() -> None:
    # The strategies are only as good as the values they make: check a few by decoding.
    @given(ids, epochs)
    def check(device: str, epoch: str) -> None:
        batch = TelemetryBatch(device_id=device, epoch=epoch, seq=0, channels=["a"], ts=[0.0],
                               values=[[0.0]])
        assert decode(TelemetryBatch, encode(batch)) == batch

    check()
