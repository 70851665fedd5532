"""The agent's signature check: the curve arithmetic runs in a child, every refusal has a reason."""

from __future__ import annotations

import base64
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization

from edge_agent.models.verify import verify_manifest_isolated
from shared.keys import SignatureError, key_id_of_raw, public_key_bytes
from shared.manifest import Manifest, parse_manifest
from shared.signing import generate_signing_key
from tests.shared.test_signing_and_codec import _manifest


def test_good_signature_verifies_in_the_child() -> None:
    key = generate_signing_key()
    signed = parse_manifest(key.sign(_manifest()).to_bytes())
    verify_manifest_isolated(signed, {key.key_id: key.public_raw})  # raises if refused


@pytest.mark.parametrize("field", ["threshold", "version"])
def test_tampered_manifest_is_refused_by_the_child(field: str) -> None:
    key = generate_signing_key()
    signed: Manifest = key.sign(_manifest())
    tampered = signed.replace(**{field: getattr(signed, field) * 2})
    with pytest.raises(SignatureError, match="does not verify"):
        verify_manifest_isolated(tampered, {key.key_id: key.public_raw})


def test_signature_of_another_key_with_a_pinned_id_is_refused() -> None:
    key, other = generate_signing_key(), generate_signing_key()
    with pytest.raises(SignatureError, match="does not verify"):
        verify_manifest_isolated(key.sign(_manifest()), {key.key_id: other.public_raw})


def test_unknown_key_and_malformed_signature_are_refused_without_a_child() -> None:
    key, other = generate_signing_key(), generate_signing_key()
    signed = key.sign(_manifest())
    with pytest.raises(SignatureError, match="unknown key id"):
        verify_manifest_isolated(signed, {other.key_id: other.public_raw})
    with pytest.raises(SignatureError, match="not valid base64"):
        verify_manifest_isolated(signed.replace(signature="%%%"), {key.key_id: key.public_raw})


def test_a_child_that_cannot_run_refuses_the_model(monkeypatch: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    key = generate_signing_key()
    monkeypatch.setattr(sys, "executable", str(tmp_path / "no-python-here"))
    with pytest.raises(SignatureError, match="could not run"):
        verify_manifest_isolated(key.sign(_manifest()), {key.key_id: key.public_raw})


def test_pinned_keys_parse_from_base64_and_pem_without_cryptography() -> None:
    key = generate_signing_key()
    assert public_key_bytes(key.public_b64()) == key.public_raw
    pem = key.public.public_bytes(serialization.Encoding.PEM,
                                  serialization.PublicFormat.SubjectPublicKeyInfo).decode()
    assert key_id_of_raw(public_key_bytes(pem)) == key.key_id
    with pytest.raises(SignatureError, match="has 31 bytes"):
        public_key_bytes(base64.b64encode(b"x" * 31).decode())
    with pytest.raises(SignatureError, match="not a PUBLIC KEY"):
        public_key_bytes("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----")


_HIJACK = """
import sys
def _child():
    sys.stdout.write('{"valid": [' + ','.join(['true'] * 256) + ']}')
    return 0
def verify_parts(parts):
    return True
"""


def _plant(where: Path) -> None:
    """Modules named like the verifier's, its library and cryptography, that say yes to all."""
    for package in ("edge_agent", "edge_agent/models", "shared", "cryptography"):
        (where / package).mkdir(parents=True, exist_ok=True)
        (where / package / "__init__.py").write_text("")
    (where / "edge_agent" / "models" / "verify.py").write_text(_HIJACK)
    (where / "shared" / "signing.py").write_text(_HIJACK)
    (where / "cryptography" / "__init__.py").write_text("raise SystemExit(0)\n")


def test_modules_planted_in_the_working_and_state_dirs_cannot_hijack_the_check(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import subprocess

    from edge_agent.models import verify

    key = generate_signing_key()
    forged = key.sign(_manifest()).replace(threshold=1e9)  # changed after signing
    state, work = tmp_path / "state", tmp_path / "work"
    _plant(state)
    _plant(work)
    monkeypatch.setenv("PYTHONPATH", str(state))
    for cwd in (work, state):  # the agent run from its working dir, or from its state dir
        monkeypatch.chdir(cwd)
        # Without isolation the plant wins: Python puts the working directory on sys.path.
        naive = subprocess.run([sys.executable, "-c", verify._CHILD, str(verify._CODE_ROOT)],
                               input=b'{"checks": []}', capture_output=True, check=False)
        assert naive.stdout.startswith(b'{"valid": [true'), naive.stderr

        with pytest.raises(SignatureError, match="does not verify"):
            verify_manifest_isolated(forged, {key.key_id: key.public_raw})
        verify_manifest_isolated(key.sign(_manifest()), {key.key_id: key.public_raw})
