"""Hub processes that start together on one empty database make one signing key between them,
not one each: the first key is made and recorded by one process at a time
(:func:`cloud_hub.db.migrate.one_at_a_time`). On one key volume (docs/scaling.md, step 3)
every process then signs with it; with a key file each, the others say which key they lack,
and sign once it is copied to them."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from cloud_hub.core.states import KeyStatus
from cloud_hub.db.key_tables import SigningKeyRecord
from cloud_hub.keys.ring import HubKeys, KeyUnavailable
from cloud_hub.mqtt.publisher import Publisher
from tests.pg import hub_engines

pytestmark = pytest.mark.hub

HUBS = 3


def _tries(kind: str, tmp_path: Path) -> Iterator[tuple[Path, list[Engine]]]:
    """Three starts, each on a new database and in a new folder: the race is tried thrice."""
    for attempt in range(3):
        folder = tmp_path / f"try-{attempt}"
        folder.mkdir()
        with hub_engines(kind, folder, HUBS) as engines:
            yield folder, engines


def _started_together(engines: list[Engine], key_paths: list[Path],
                      keys_dirs: list[Path]) -> list[HubKeys]:
    barrier = threading.Barrier(len(engines))
    rings: list[HubKeys | BaseException | None] = [None] * len(engines)

    def start(i: int) -> None:
        barrier.wait()
        try:
            rings[i] = HubKeys(engines[i], keys_dir=keys_dirs[i], first_key_path=key_paths[i])
        except BaseException as exc:  # reported below, with the others
            rings[i] = exc

    threads = [threading.Thread(target=start, args=(i,)) for i in range(len(engines))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    failed = [r for r in rings if not isinstance(r, HubKeys)]
    assert not failed, failed
    return [r for r in rings if isinstance(r, HubKeys)]


def _records(engine: Engine) -> list[SigningKeyRecord]:
    with Session(engine) as session:
        return list(session.exec(select(SigningKeyRecord)))


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_hubs_started_together_on_one_key_volume_share_one_key(kind: str,
                                                               tmp_path: Path) -> None:
    for folder, engines in _tries(kind, tmp_path):
        shared = folder / "volume" / "signing-key.pem"
        rings = _started_together(engines, [shared] * HUBS,
                                  [folder / f"hub-{i}" / "keys" for i in range(HUBS)])
        records = _records(engines[0])
        assert [(r.status, r.key_id) for r in records] == [
            (KeyStatus.ACTIVE, records[0].key_id)]
        assert {ring.active.key_id for ring in rings} == {records[0].key_id}
        assert rings[0].active.public_b64() == records[0].public_key


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_hubs_started_together_with_a_key_file_each_record_one_key(kind: str,
                                                                   tmp_path: Path) -> None:
    for folder, engines in _tries(kind, tmp_path):
        paths = [folder / f"hub-{i}" / "signing-key.pem" for i in range(HUBS)]
        rings = _started_together(engines, paths,
                                  [folder / f"hub-{i}" / "keys" for i in range(HUBS)])
        records = _records(engines[0])
        assert len(records) == 1 and records[0].status == KeyStatus.ACTIVE
        made = [p for p in paths if p.exists()]  # only the first process made a key
        assert len(made) == 1
        signers = [ring for ring in rings if _can_sign(ring)]
        assert len(signers) == 1
        assert signers[0].active.key_id == records[0].key_id
        others = [ring for ring in rings if ring is not signers[0]]
        for ring in others:
            with pytest.raises(KeyUnavailable, match=records[0].key_id):
                _ = ring.active
        # Nor can they rotate: devices take only a trust list that a key they trust signed,
        # and one signed by the new key alone would be refused by all. Nothing changes.
        key_id = records[0].key_id
        published = _TrustLists()
        with Session(engines[0]) as session, pytest.raises(KeyUnavailable,
                                                           match="Copy the active key"):
            others[0].rotate(session, overlap_s=3600, publisher=cast(Publisher, published))
        assert [r.key_id for r in _records(engines[0])] == [key_id]
        assert not published.published and not others[0].keys_dir.exists()
        # The operator copies the key to the others, as docs/scaling.md says: they sign
        # with it from then on, without a restart.
        for ring in others:
            ring.keys_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy2(made[0], ring.keys_dir / f"{key_id}.pem")
            with Session(engines[0]) as session:
                assert [k["private_key_here"] for k in ring.view(session)["keys"]] == [True]
            assert ring.active.key_id == key_id
        with Session(engines[0]) as session:  # and rotate, signing with the copied key
            others[0].rotate(session, overlap_s=3600, publisher=cast(Publisher, published))
        assert len(published.published) == 1


def _can_sign(ring: HubKeys) -> bool:
    try:
        _ = ring.active
    except KeyUnavailable:
        return False
    return True


class _TrustLists:
    """Stands in for the hub's MQTT publisher: keeps what would be published retained."""

    def __init__(self) -> None:
        self.published: list[list[tuple[int, bytes]]] = []

    def publish_trust_lists(self, lists: list[tuple[int, bytes]]) -> None:
        self.published.append(lists)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_a_key_rotated_by_one_hub_signs_on_the_others_sharing_its_volume(
        kind: str, tmp_path: Path) -> None:
    with hub_engines(kind, tmp_path, HUBS) as engines:
        volume = tmp_path / "volume"
        rings = _started_together(engines, [volume / "signing-key.pem"] * HUBS,
                                  [volume / "keys"] * HUBS)
        first = rings[1].active.key_id
        published = _TrustLists()
        with Session(engines[0]) as session:
            version = rings[0].rotate(session, overlap_s=3600,
                                      publisher=cast(Publisher, published))
        assert [v for v, _ in published.published[-1]] == [version]
        new = _records(engines[0])
        active = [r.key_id for r in new if r.status == KeyStatus.ACTIVE]
        assert len(active) == 1 and active[0] != first
        for ring in rings[1:]:  # started before the key existed, no restart since
            assert ring.active.key_id == active[0]
            with Session(engines[0]) as session:
                assert [k["private_key_here"] for k in ring.view(session)["keys"]] == [True, True]
