"""The trust-list document: canonical bytes, strict decoding, errors that name the field."""

from __future__ import annotations

import json
import re

import pytest

from shared.keys import SignatureError
from shared.signing import SigningKey, generate_signing_key, sign_trust_list, verify_trust_list
from shared.trust import (
    MAX_TRUST_LIST_BYTES,
    TrustedKey,
    TrustList,
    TrustListError,
    canonical_bytes,
    parse_trust_list,
)


def trust_list(version: int, keys: list[SigningKey], signers: list[SigningKey]) -> TrustList:
    unsigned = TrustList(version=version, created_at=1_700_000_000.0 + version, keys={
        k.key_id: TrustedKey(public_key=k.public_b64(), since=1_700_000_000.0) for k in keys
    })
    return sign_trust_list(unsigned, signers)


def test_a_signed_list_round_trips_and_verifies_with_any_of_its_signers() -> None:
    old, new = generate_signing_key(), generate_signing_key()
    signed = trust_list(1, [old, new], [old, new])
    again = parse_trust_list(signed.to_bytes())
    assert again == signed
    assert again.public_keys() == {old.key_id: old.public_raw, new.key_id: new.public_raw}
    verify_trust_list(again, {old.key_id: old.public_raw})
    verify_trust_list(again, {new.key_id: new.public_raw})


def test_signatures_are_not_part_of_the_signed_bytes_and_every_other_field_is() -> None:
    key = generate_signing_key()
    signed = trust_list(3, [key], [key])
    assert b"signatures" not in canonical_bytes(signed)
    assert canonical_bytes(signed) == canonical_bytes(signed.replace(signatures=[]))
    for changed in (signed.replace(version=4), signed.replace(created_at=1.0),
                    signed.replace(keys={**signed.keys, **trust_list(
                        1, [other := generate_signing_key()], [other]).keys})):
        with pytest.raises(SignatureError, match="does not verify"):
            verify_trust_list(changed, {key.key_id: key.public_raw})


def test_a_list_no_trusted_key_signed_is_refused_naming_its_signers() -> None:
    key, stranger = generate_signing_key(), generate_signing_key()
    signed = trust_list(1, [key], [stranger])
    with pytest.raises(SignatureError, match=f"signed by \\['{stranger.key_id}'\\], none of"):
        verify_trust_list(signed, {key.key_id: key.public_raw})


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d.update(version=0), "version"),
        (lambda d: d.update(surprise=1), "surprise"),
        (lambda d: d.update(keys={}), "keys"),
        (lambda d: d["signatures"][0].update(key_id="XYZ"), "signatures.0.key_id"),
        (lambda d: d.update(keys={"zz" + k[2:]: v for k, v in d["keys"].items()}),
         "keys (a key id)"),
        (lambda d: d.update(created_at=-1.0), "created_at"),
    ],
)
def test_a_malformed_list_is_refused_naming_the_field(change: object, field: str) -> None:
    key = generate_signing_key()
    data = json.loads(trust_list(1, [key], [key]).to_bytes())
    change(data)  # type: ignore[operator]
    with pytest.raises(TrustListError, match=re.escape(f"field {field}")):
        parse_trust_list(json.dumps(data))


def test_a_public_key_that_does_not_match_its_id_is_refused() -> None:
    key, other = generate_signing_key(), generate_signing_key()
    data = json.loads(trust_list(1, [key], [key]).to_bytes())
    data["keys"][key.key_id]["public_key"] = other.public_b64()
    with pytest.raises(TrustListError, match=f"the public key's id is {other.key_id}"):
        parse_trust_list(json.dumps(data))


def test_duplicate_signers_unknown_version_and_oversize_are_refused() -> None:
    key = generate_signing_key()
    data = json.loads(trust_list(1, [key], [key]).to_bytes())
    data["signatures"] *= 2
    with pytest.raises(TrustListError, match="contain duplicates"):
        parse_trust_list(json.dumps(data))
    data = json.loads(trust_list(1, [key], [key]).to_bytes())
    data["v"] = 7
    with pytest.raises(TrustListError, match="unsupported trust list version v=7"):
        parse_trust_list(json.dumps(data))
    with pytest.raises(TrustListError, match="exceeds"):
        parse_trust_list(b" " * (MAX_TRUST_LIST_BYTES + 1))
    with pytest.raises(TrustListError, match="not valid JSON"):
        parse_trust_list(b"{")
