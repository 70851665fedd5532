"""Model variants on the wire (issue 12): a ref may name a variant, old messages and old agents
keep working, variant topics parse, and the signature covers the variant a manifest is."""

from __future__ import annotations

import json

import pytest

from shared.manifest import Quantization, parse_manifest
from shared.messages import Desired, MessageError, ModelRef, Reported, decode, encode
from shared.signing import SignatureError, generate_signing_key, verify_manifest
from shared.topics import TopicError, Topics
from tests.edge_agent.support import fixture_bytes, make_manifest

TOPICS = Topics()


def test_a_desired_without_variant_is_the_json_earlier_builds_send_and_accept() -> None:
    old = b'{"v":2,"device_id":"d1","model":{"name":"m","version":3},"config":{},' \
          b'"issued_at":5.0}'
    desired = decode(Desired, old)
    assert desired.model == ModelRef(name="m", version=3)
    assert desired.model is not None and desired.model.variant is None
    assert b"variant" not in encode(desired), "agents of earlier builds refuse unknown fields"
    assert json.loads(encode(desired))["model"] == {"name": "m", "version": 3}


def test_a_desired_names_a_variant() -> None:
    desired = Desired(device_id="d1", model=ModelRef(name="m", version=3, variant="float32"),
                      issued_at=5.0)
    again = decode(Desired, encode(desired))
    assert again.model is not None and again.model.variant == "float32"


def test_an_unknown_but_well_formed_variant_parses_so_the_agent_can_refuse_it() -> None:
    payload = b'{"v":2,"device_id":"d1","model":{"name":"m","version":3,"variant":"int4"},' \
              b'"issued_at":5.0}'
    assert decode(Desired, payload).model.variant == "int4"  # type: ignore[union-attr]
    with pytest.raises(MessageError, match="model.variant"):
        decode(Desired, payload.replace(b"int4", b"INT.4"))


def test_reported_from_earlier_builds_still_parses_and_new_ones_say_the_variant() -> None:
    old = b'{"device_id":"d1","model":{"name":"m","version":1,"sha256":null},' \
          b'"state":"active","since":1.0}'
    assert decode(Reported, old).model.variant is None  # type: ignore[union-attr]
    new = b'{"device_id":"d1","model":{"name":"m","version":1,"variant":"float32"},' \
          b'"state":"active","since":1.0}'
    assert decode(Reported, new).model.variant == "float32"  # type: ignore[union-attr]


def test_variant_topics_are_built_and_parsed_beside_the_version_topics() -> None:
    assert TOPICS.manifest("m", 3) == "edgeloop/v1/models/m/3/manifest"
    assert TOPICS.manifest("m", 3, "float32") == "edgeloop/v1/models/m/3/variants/float32/manifest"
    chunk = TOPICS.chunk("m", 3, 7, "float32")
    assert chunk == "edgeloop/v1/models/m/3/variants/float32/chunks/7"
    parsed = TOPICS.parse(chunk)
    assert (parsed.kind, parsed.model_name, parsed.model_version, parsed.chunk_index,
            parsed.variant) == ("chunk", "m", 3, 7, "float32")
    assert TOPICS.parse(TOPICS.manifest("m", 3)).variant is None
    with pytest.raises(TopicError, match="variant"):
        TOPICS.manifest("m", 3, "Float/32")
    with pytest.raises(TopicError):
        TOPICS.parse("edgeloop/v1/models/m/3/variants/float32")
    # the device's ACL (models/#) covers the variant topics
    assert "edgeloop/v1/models/#" in TOPICS.device_access("d1").subscribe


def test_a_manifest_whose_variant_was_changed_fails_its_signature() -> None:
    key = generate_signing_key()
    manifest = make_manifest(key, fixture_bytes("ae_int8_w8c2.tflite"),
                             quantization=Quantization.INT8)
    verify_manifest(manifest, {key.key_id: key.public_raw})
    forged = parse_manifest(manifest.to_bytes().replace(b'"quantization": "int8"',
                                                        b'"quantization": "float32"'))
    assert forged.quantization is Quantization.FLOAT32
    with pytest.raises(SignatureError):
        verify_manifest(forged, {key.key_id: key.public_raw})
