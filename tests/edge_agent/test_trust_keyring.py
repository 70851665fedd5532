"""The device's key ring on its own: each rotation step, a device offline through a rotation,
lists signed by unknown keys, downgrades, tampering, and the persisted chain. The signatures
are checked by the real isolated verifier child."""

from __future__ import annotations

import base64
import json
from pathlib import Path

from edge_agent.trust.keyring import TRUST_FILE, KeyRing
from shared.signing import SigningKey, generate_signing_key
from tests.shared.test_trust import trust_list


def _ring(tmp_path: Path, *root: SigningKey) -> KeyRing:
    ring = KeyRing({k.key_id: k.public_raw for k in root}, tmp_path / TRUST_FILE)
    ring.load()
    return ring


def _rotation() -> tuple[SigningKey, SigningKey, bytes, bytes]:
    """What the hub publishes for one rotation: v1 {old, new} signed by both, v2 {new}."""
    old, new = generate_signing_key(), generate_signing_key()
    return (old, new, trust_list(1, [old, new], [old, new]).to_bytes(),
            trust_list(2, [new], [new]).to_bytes())


def test_a_rotation_adds_the_new_key_then_retiring_drops_the_old(tmp_path: Path) -> None:
    old, new, v1, v2 = _rotation()
    ring = _ring(tmp_path, old)
    assert ring.version == 0 and set(ring.trusted()) == {old.key_id}

    assert ring.offer(1, v1).applied == (1,)
    assert ring.version == 1 and set(ring.trusted()) == {old.key_id, new.key_id}
    assert ring.offer(2, v2).applied == (2,)
    assert set(ring.trusted()) == {new.key_id}
    assert set(ring.known()) == {old.key_id, new.key_id}  # for models installed meanwhile
    assert ring.refused == 0


def test_a_device_offline_through_a_rotation_walks_the_lists_in_any_arrival_order(
    tmp_path: Path,
) -> None:
    old, new, v1, v2 = _rotation()
    ring = _ring(tmp_path, old)
    waiting = ring.offer(2, v2)  # the broker may hand out v2 first: no trusted key signed it
    assert waiting.waiting and waiting.applied == () and ring.version == 0
    assert ring.offer(1, v1).applied == (1, 2)
    assert ring.version == 2 and set(ring.trusted()) == {new.key_id}
    assert ring.waiting() == []


def test_a_device_enrolled_with_only_the_new_key_follows_the_same_lists(tmp_path: Path) -> None:
    old, new, v1, v2 = _rotation()
    ring = _ring(tmp_path, new)
    assert ring.offer(1, v1).applied == (1,)  # signed by the new key too
    assert ring.offer(2, v2).applied == (2,)
    assert set(ring.trusted()) == {new.key_id}


def test_a_list_signed_by_an_unknown_key_is_never_applied(tmp_path: Path) -> None:
    key, stranger = generate_signing_key(), generate_signing_key()
    ring = _ring(tmp_path, key)
    forged = trust_list(1, [stranger], [stranger]).to_bytes()
    outcome = ring.offer(1, forged)
    assert outcome.applied == () and outcome.waiting
    assert set(ring.trusted()) == {key.key_id} and ring.version == 0
    # a real v1 later takes its place; the forged one never becomes trusted
    real = trust_list(1, [key], [key]).to_bytes()
    assert ring.offer(1, real).applied == (1,)
    assert set(ring.trusted()) == {key.key_id}


def test_a_downgrade_or_replay_of_an_older_version_is_refused(tmp_path: Path) -> None:
    old, new, v1, v2 = _rotation()
    ring = _ring(tmp_path, old)
    ring.offer(1, v1)
    ring.offer(2, v2)
    assert ring.offer(1, v1).refused is None  # the same retained record again: quietly ignored
    older = trust_list(1, [old, new], [new]).to_bytes()  # validly signed, but not newer
    assert "not newer than v2" in (ring.offer(1, older).refused or "")
    relabelled = ring.offer(3, v1)  # an old list put on a newer topic
    assert "trust/3 holds a list that says version 1" in (relabelled.refused or "")
    assert ring.version == 2 and set(ring.trusted()) == {new.key_id}
    assert ring.refused == 2


def test_a_list_changed_after_signing_is_refused(tmp_path: Path) -> None:
    key, intruder = generate_signing_key(), generate_signing_key()
    ring = _ring(tmp_path, key)
    data = json.loads(trust_list(1, [key], [key]).to_bytes())
    data["keys"][intruder.key_id] = {"public_key": intruder.public_b64(), "since": 1.0}
    outcome = ring.offer(1, json.dumps(data).encode())
    assert "does not verify" in (outcome.refused or "")
    assert set(ring.trusted()) == {key.key_id}


def test_the_applied_chain_survives_a_restart_and_is_checked_again(tmp_path: Path) -> None:
    old, new, v1, v2 = _rotation()
    ring = _ring(tmp_path, old)
    ring.offer(1, v1)
    ring.offer(2, v2)

    again = _ring(tmp_path, old)
    assert again.version == 2 and set(again.trusted()) == {new.key_id}

    # A state file someone edited cannot add a key: the chain stops where it stops verifying.
    state = json.loads((tmp_path / TRUST_FILE).read_text())
    intruder = generate_signing_key()
    forged = json.loads(base64.b64decode(state["chain"][1]))
    forged["keys"][intruder.key_id] = {"public_key": intruder.public_b64(), "since": 1.0}
    state["chain"][1] = base64.b64encode(json.dumps(forged).encode()).decode()
    (tmp_path / TRUST_FILE).write_text(json.dumps(state))
    edited = _ring(tmp_path, old)
    assert edited.version == 1 and intruder.key_id not in edited.trusted()


def test_a_new_pinned_root_does_not_inherit_a_chain_it_does_not_sign(tmp_path: Path) -> None:
    old, new, v1, v2 = _rotation()
    ring = _ring(tmp_path, old)
    ring.offer(1, v1)
    other = generate_signing_key()
    reenrolled = _ring(tmp_path, other)  # agent.toml now pins another key
    assert reenrolled.version == 0 and set(reenrolled.trusted()) == {other.key_id}
