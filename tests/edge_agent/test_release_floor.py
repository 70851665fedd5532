"""Anti-rollback on the device: an older release is refused with its reason, a rollback the hub
signs as a new release is taken (from the file already installed), the floor survives restarts,
and a model signed by a retired key is refused while what it signed before still runs."""

from __future__ import annotations

from pathlib import Path

from edge_agent.models.store import ModelStore
from edge_agent.trust.keyring import TRUST_FILE, KeyRing
from shared.messages import ModelRef
from shared.signing import generate_signing_key
from tests.edge_agent.support import TOPICS, fixture_bytes, make_manifest
from tests.edge_agent.test_updater import Rig
from tests.shared.test_trust import trust_list

DATA = fixture_bytes("ae_int8_w8c2.tflite")


def _active(rig: Rig) -> tuple[int, int] | None:
    active = rig.detector.active
    return None if active is None else (active.manifest.version, active.manifest.release)


def test_an_older_release_is_refused_and_a_hub_rollback_as_a_new_release_is_taken(
    tmp_path: Path,
) -> None:
    key = generate_signing_key()
    rig = Rig(tmp_path, key)
    v1 = make_manifest(key, DATA, version=1, release=1, threshold=0.2)
    v2 = make_manifest(key, DATA, version=2, release=2, threshold=0.3)
    for issued, manifest in enumerate((v1, v2), start=1):
        rig.updater.want(ModelRef(name="pump-ae", version=manifest.version), issued)
        rig.publish(manifest, DATA)
    assert _active(rig) == (2, 2) and rig.store.releases.get("pump-ae") == 2

    # Someone puts the old signed v1 manifest back and points the device at it.
    rig.updater.want(ModelRef(name="pump-ae", version=1), 3)
    assert TOPICS.manifest("pump-ae", 1) in rig.link.active, "the old release on disk is not used"
    rig.deliver(TOPICS.manifest("pump-ae", 1), v1.to_bytes())
    last = rig.reports[-1]
    assert last.state.value == "failed"
    assert "release 1, older than release 2 installed here" in str(last.error)
    assert _active(rig) == (2, 2)

    # The hub rolls back: v1's content as release 3, signed. The installed file is reused.
    rollback = make_manifest(key, DATA, version=1, release=3, threshold=0.2)
    rig.link.subscribed.clear()
    rig.updater.want(ModelRef(name="pump-ae", version=1), 4)
    rig.deliver(TOPICS.manifest("pump-ae", 1), rollback.to_bytes())
    assert _active(rig) == (1, 3)
    assert not [t for t in rig.link.subscribed if "/chunks/" in t], "no download needed"
    assert rig.store.releases.get("pump-ae") == 3

    # ...after which the v2 manifest of release 2 is a replay too.
    rig.updater.want(ModelRef(name="pump-ae", version=2), 5)
    rig.deliver(TOPICS.manifest("pump-ae", 2), v2.to_bytes())
    assert "release 2, older than release 3" in str(rig.reports[-1].error)
    assert _active(rig) == (1, 3)


def test_the_release_floor_survives_a_restart_and_a_damaged_file(tmp_path: Path) -> None:
    key = generate_signing_key()
    rig = Rig(tmp_path, key)
    rig.updater.want(ModelRef(name="pump-ae", version=4))
    rig.publish(make_manifest(key, DATA, version=4, release=7), DATA)
    assert ModelStore(tmp_path, {}).releases.get("pump-ae") == 7
    (tmp_path / "releases.json").write_text("{not json")
    assert ModelStore(tmp_path, {}).releases.get("pump-ae") == 7, "rebuilt from what is on disk"
    (tmp_path / "releases.json").unlink()
    assert ModelStore(tmp_path, {}).releases.get("pump-ae") == 7


def test_a_model_signed_by_a_retired_key_is_refused_but_what_it_signed_still_runs(
    tmp_path: Path,
) -> None:
    old, new = generate_signing_key(), generate_signing_key()
    ring = KeyRing({old.key_id: old.public_raw}, tmp_path / TRUST_FILE)
    rig = Rig(tmp_path / "models", old, keys=ring)
    rig.updater.want(ModelRef(name="pump-ae", version=1))
    rig.publish(make_manifest(old, DATA, version=1, threshold=0.2), DATA)
    assert _active(rig) == (1, 1)
    ring.offer(1, trust_list(1, [old, new], [old, new]).to_bytes())
    ring.offer(2, trust_list(2, [new], [new]).to_bytes())
    assert set(ring.trusted()) == {new.key_id}

    restarted = KeyRing({old.key_id: old.public_raw}, tmp_path / TRUST_FILE)
    restarted.load()
    again = Rig(tmp_path / "models", old, keys=restarted)
    again.updater.load_current()
    assert _active(again) == (1, 1), "installed while its key was trusted: it still runs"

    again.updater.want(ModelRef(name="pump-ae", version=2))
    again.publish(make_manifest(old, DATA, version=2, threshold=0.2), DATA)
    assert "unknown key id" in str(again.reports[-1].error)
    assert _active(again) == (1, 1)
    again.updater.want(ModelRef(name="pump-ae", version=2), 1.0)
    again.publish(make_manifest(new, DATA, version=2, threshold=0.2), DATA)
    assert _active(again) == (2, 2)
