"""The updater and model variants (issue 12): a desired naming a variant fetches that variant's
manifest and chunks, refuses another variant's manifest at its topic, refuses a variant that
does not exist in its reported state, and reports which variant runs."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.codec import split
from shared.manifest import Manifest, Quantization
from shared.messages import ModelRef
from shared.signing import generate_signing_key
from tests.edge_agent.support import TOPICS, fixture_bytes, make_manifest
from tests.edge_agent.test_updater import Rig

INT8 = fixture_bytes("ae_int8_w8c2.tflite")
FLOAT32 = fixture_bytes("ae_float32_w8c2.tflite")


def publish_variant(rig: Rig, manifest: Manifest, data: bytes, variant: str) -> None:
    rig.deliver(TOPICS.manifest(manifest.name, manifest.version, variant), manifest.to_bytes())
    for i, chunk in enumerate(split(data, manifest.chunk_size)):
        rig.deliver(TOPICS.chunk(manifest.name, manifest.version, i, variant), chunk)


def test_a_named_variant_is_fetched_from_its_own_topics_and_reported(tmp_path: Path) -> None:
    key = generate_signing_key()
    f32 = make_manifest(key, FLOAT32, quantization=Quantization.FLOAT32)
    rig = Rig(tmp_path, key)
    rig.updater.want(ModelRef(name="pump-ae", version=1, variant="float32"), 1.0)
    assert TOPICS.manifest("pump-ae", 1, "float32") in rig.link.subscribed
    assert TOPICS.manifest("pump-ae", 1) not in rig.link.subscribed
    rig.publish(make_manifest(key, INT8), INT8)  # the published variant: not what was asked
    assert rig.detector.active is None
    publish_variant(rig, f32, FLOAT32, "float32")
    assert rig.detector.active is not None
    assert rig.detector.active.manifest.quantization is Quantization.FLOAT32
    last = rig.reports[-1]
    assert last.state.value == "active"
    assert last.model is not None and last.model.variant == "float32"
    assert last.active is not None and last.active.variant == "float32"
    assert not rig.link.active, "download subscriptions dropped"


def test_no_variant_named_fetches_the_published_one_as_before(tmp_path: Path) -> None:
    key = generate_signing_key()
    rig = Rig(tmp_path, key)
    rig.updater.want(ModelRef(name="pump-ae", version=1), 1.0)
    rig.publish(make_manifest(key, INT8), INT8)
    assert rig.reports[-1].active is not None
    assert rig.reports[-1].active.variant == "int8"


def test_another_variants_manifest_at_a_variant_topic_is_refused(tmp_path: Path) -> None:
    key = generate_signing_key()
    rig = Rig(tmp_path, key)
    rig.updater.want(ModelRef(name="pump-ae", version=1, variant="float32"), 1.0)
    int8 = make_manifest(key, INT8)  # validly signed, but the int8 variant
    publish_variant(rig, int8, INT8, "float32")
    assert rig.detector.active is None
    assert rig.updater.refused == 1
    last = rig.reports[-1]
    assert last.state.value == "failed"
    assert last.error is not None and "variant float32 describes variant int8" in last.error


def test_a_variant_that_does_not_exist_is_refused_and_reported(tmp_path: Path) -> None:
    key = generate_signing_key()
    rig = Rig(tmp_path, key)
    rig.updater.want(ModelRef(name="pump-ae", version=1), 1.0)
    rig.publish(make_manifest(key, INT8), INT8)
    rig.updater.want(ModelRef(name="pump-ae", version=2, variant="int4"), 2.0)
    last = rig.reports[-1]
    assert last.state.value == "failed"
    assert last.error is not None and "variant 'int4'" in last.error
    assert "does not exist" in last.error
    assert last.model is not None and (last.model.version, last.model.variant) == (2, "int4")
    assert last.active is not None and last.active.version == 1, "the old model keeps running"
    assert not rig.link.active, "nothing subscribed for it"
    rig.updater.want(ModelRef(name="pump-ae", version=2, variant="int4"), 2.0)
    assert len([r for r in rig.reports if r.state.value == "failed"]) == 1, "decided once"
    v2 = make_manifest(key, FLOAT32, version=2, quantization=Quantization.FLOAT32)
    rig.updater.want(ModelRef(name="pump-ae", version=2, variant="float32"), 3.0)
    publish_variant(rig, v2, FLOAT32, "float32")
    assert rig.reports[-1].active is not None
    assert (rig.reports[-1].active.version, rig.reports[-1].active.variant) == (2, "float32")


def test_a_stored_copy_of_another_variant_is_replaced(tmp_path: Path) -> None:
    key = generate_signing_key()
    rig = Rig(tmp_path, key)
    rig.updater.want(ModelRef(name="pump-ae", version=1), 1.0)
    rig.publish(make_manifest(key, INT8), INT8)
    int8_v2 = make_manifest(key, INT8, version=2)
    rig.updater.want(ModelRef(name="pump-ae", version=2), 2.0)
    rig.deliver(TOPICS.manifest("pump-ae", 2), int8_v2.to_bytes())  # manifest only: stored
    assert rig.store.saved_manifest("pump-ae", 2) is not None
    f32_v2 = make_manifest(key, FLOAT32, version=2, quantization=Quantization.FLOAT32)
    rig.updater.want(ModelRef(name="pump-ae", version=2, variant="float32"), 3.0)
    assert TOPICS.manifest("pump-ae", 2, "float32") in rig.link.subscribed
    publish_variant(rig, f32_v2, FLOAT32, "float32")
    assert rig.reports[-1].active is not None
    assert rig.reports[-1].active.variant == "float32"
    assert rig.store.read_verified("pump-ae", 2)[1] == FLOAT32


def test_an_old_release_of_a_variant_is_refused_like_any_replay(tmp_path: Path) -> None:
    key = generate_signing_key()
    rig = Rig(tmp_path, key)
    rig.updater.want(ModelRef(name="pump-ae", version=2), 1.0)
    rig.publish(make_manifest(key, INT8, version=2, release=2), INT8)
    old = make_manifest(key, FLOAT32, version=1, release=1, quantization=Quantization.FLOAT32)
    rig.updater.want(ModelRef(name="pump-ae", version=1, variant="float32"), 2.0)
    publish_variant(rig, old, FLOAT32, "float32")
    last = rig.reports[-1]
    assert last.state.value == "failed"
    assert last.error is not None and "release 1, older than release 2" in last.error
    assert rig.detector.active is not None and rig.detector.active.manifest.version == 2


# -- another variant of the version that runs --------------------------------------------------

def _running_int8(tmp_path: Path, **settings: object) -> tuple[Rig, Manifest]:
    key = generate_signing_key()
    rig = Rig(tmp_path, key, **settings)
    rig.updater.want(ModelRef(name="pump-ae", version=1), 1.0)
    rig.publish(make_manifest(key, INT8), INT8)
    rig.feed(40)  # through its shadow run, when there is one
    assert rig.detector.active is not None
    f32 = make_manifest(key, FLOAT32, quantization=Quantization.FLOAT32)
    return rig, f32


def test_another_variant_of_the_running_version_is_fetched_beside_it_and_swapped_in(
    tmp_path: Path,
) -> None:
    rig, f32 = _running_int8(tmp_path)
    int8_sha = rig.store.current().sha256  # type: ignore[union-attr]
    rig.updater.want(ModelRef(name="pump-ae", version=1, variant="float32"), 2.0)
    assert TOPICS.manifest("pump-ae", 1, "float32") in rig.link.subscribed
    assert rig.reports[-1].state.value == "downloading"
    assert rig.reports[-1].active is not None and rig.reports[-1].active.variant == "int8"
    assert rig.store.read_verified("pump-ae", 1)[1] == INT8, "the running one stays on disk"
    publish_variant(rig, f32, FLOAT32, "float32")
    active = rig.detector.active
    assert active is not None and active.manifest.quantization is Quantization.FLOAT32
    last = rig.reports[-1]
    assert last.state.value == "active" and last.active is not None
    assert (last.active.version, last.active.variant) == (1, "float32")
    assert rig.store.read_verified("pump-ae", 1)[1] == FLOAT32
    pointer = rig.store.current()
    assert pointer is not None and pointer.sha256 == f32.sha256 != int8_sha
    assert not (tmp_path / ".switch").exists(), "nothing left in the switch area"
    assert not rig.link.active, "download subscriptions dropped"
    again = Rig(tmp_path, generate_signing_key(), keys=rig.store.keys)  # a restart
    again.updater.load_current()
    assert again.detector.active is not None
    assert again.detector.active.manifest.quantization is Quantization.FLOAT32


def test_a_switch_goes_through_the_shadow_run_and_the_running_variant_scores_meanwhile(
    tmp_path: Path,
) -> None:
    rig, f32 = _running_int8(tmp_path, shadow_windows=20)
    rig.updater.want(ModelRef(name="pump-ae", version=1, variant="float32"), 2.0)
    publish_variant(rig, f32, FLOAT32, "float32")
    assert rig.reports[-1].state.value == "shadow"
    active = rig.detector.active
    assert active is not None and active.manifest.quantization is Quantization.INT8
    rig.feed(40)
    active = rig.detector.active
    assert active is not None and active.manifest.quantization is Quantization.FLOAT32
    assert rig.reports[-1].state.value == "active"


def test_a_switch_that_fails_leaves_the_running_variant_in_place(tmp_path: Path) -> None:
    rig, f32 = _running_int8(tmp_path, chunk_retries=0)
    rig.updater.want(ModelRef(name="pump-ae", version=1, variant="float32"), 2.0)
    bad = bytearray(FLOAT32)
    bad[100] ^= 0xFF
    publish_variant(rig, f32, bytes(bad), "float32")  # the first chunk's hash does not match
    last = rig.reports[-1]
    assert last.state.value == "failed" and last.error is not None and "chunk 0" in last.error
    assert last.active is not None and last.active.variant == "int8"
    assert not (tmp_path / ".switch").exists(), "the failed download is deleted"
    rig.updater.want(ModelRef(name="pump-ae", version=1), 3.0)  # desired back to the published
    active = rig.detector.active
    assert active is not None and active.manifest.quantization is Quantization.INT8
    assert rig.reports[-1].state.value == "active"
    assert rig.store.read_verified("pump-ae", 1)[1] == INT8
    assert not (tmp_path / ".switch").exists()
    assert not rig.link.active


def test_a_desired_naming_no_variant_is_met_by_the_variant_that_runs(tmp_path: Path) -> None:
    rig, f32 = _running_int8(tmp_path)
    rig.updater.want(ModelRef(name="pump-ae", version=1, variant="float32"), 2.0)
    publish_variant(rig, f32, FLOAT32, "float32")
    reports = len(rig.reports)
    rig.updater.want(ModelRef(name="pump-ae", version=1), 3.0)
    assert not rig.link.active, "nothing to fetch"
    active = rig.detector.active
    assert active is not None and active.manifest.quantization is Quantization.FLOAT32
    assert len(rig.reports) == reports, "nothing changed, nothing reported"


def test_a_switch_area_that_cannot_be_made_is_reported_failed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig, _ = _running_int8(tmp_path)

    def no_room() -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(rig.store, "switch_store", no_room)
    rig.updater.want(ModelRef(name="pump-ae", version=1, variant="float32"), 2.0)
    last = rig.reports[-1]
    assert last.state.value == "failed" and last.error is not None
    assert "variant float32" in last.error and "No space left" in last.error
    assert last.active is not None and last.active.variant == "int8", "the running one stays"
    assert not rig.link.active, "nothing subscribed for a download that did not start"
    active = rig.detector.active
    assert active is not None and active.manifest.quantization is Quantization.INT8
