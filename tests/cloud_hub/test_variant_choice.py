from __future__ import annotations

import json

import pytest
from sqlmodel import Session

from cloud_hub.db.devices import ensure_devices
from cloud_hub.registry.lifecycle import PublishRefused, get_model
from cloud_hub.registry.records import variants_of
from cloud_hub.rollouts.desired import set_desired
from cloud_hub.rollouts.variant import (
    NO_RUNTIME_REASON,
    choose_variant,
    pick_for_device,
    runtime_of,
)
from cloud_hub.service import Hub
from shared.manifest import manifest_from_dict, parse_manifest
from shared.messages import AgentRuntime, MessageError, ModelRef, Status, decode, encode
from shared.signing import verify_manifest
from simulator.broker import Broker
from tests.cloud_hub.helpers import Subscriber, variant_artifact, wait_for

LITERT = AgentRuntime(package="litert", version="1.2.0", xnnpack_int8=True)
LEGACY = AgentRuntime(package="tflite-runtime", version="2.14.0", xnnpack_int8=False)


def test_int8_where_xnnpack_runs_it() -> None:
    quantization, why = choose_variant(LITERT, {"int8", "float32"}) or ("", "")
    assert quantization == "int8"
    assert "litert 1.2.0" in why


def test_float32_on_legacy_runtime() -> None:
    quantization, why = choose_variant(LEGACY, {"int8", "float32"}) or ("", "")
    assert quantization == "float32"
    assert "does not run int8" in why


def test_falls_back_to_the_variant_that_passed_parity() -> None:
    assert choose_variant(LEGACY, {"int8"}) == (
        "int8", "tflite-runtime 2.14.0: XNNPACK does not run int8, float32 is faster; "
        "float32 failed parity")
    assert choose_variant(LITERT, {"float32"})[0] == "float32"  # type: ignore[index]
    assert choose_variant(LITERT, set()) is None


def test_unreported_runtime_keeps_int8() -> None:
    assert choose_variant(None, {"int8", "float32"})[0] == "int8"  # type: ignore[index]


def test_status_with_and_without_runtime() -> None:
    old = Status(device_id="d1", state="online", at=5.0, agent_version="0.1.0")
    wire = encode(old)
    assert b"runtime" not in wire  # hubs of earlier builds refuse unknown fields
    assert decode(Status, wire) == old
    new = Status(device_id="d1", state="online", at=5.0, runtime=LEGACY)
    assert decode(Status, encode(new)).runtime == LEGACY
    bad = wire[:-1] + b',"runtime":{"package":"x","xnnpack_int8":true,"extra":1}}'
    with pytest.raises(MessageError):
        decode(Status, bad)


# -- per device (issue 12): which variant set_desired sends -------------------------------------

def test_a_device_that_reported_no_runtime_gets_the_published_variant_unnamed() -> None:
    pick = pick_for_device(None, published="int8", variants=["float32"])
    assert (pick.quantization, pick.variant) == ("int8", None)
    assert "not reported" in pick.reason


def test_each_runtime_gets_its_fastest_variant_named_unless_it_is_the_published_one() -> None:
    legacy = pick_for_device(LEGACY, published="int8", variants=["float32"])
    assert (legacy.quantization, legacy.variant) == ("float32", "float32")
    lite = pick_for_device(LITERT, published="int8", variants=["float32"])
    assert (lite.quantization, lite.variant) == ("int8", None)
    # a version auto published as float16 still sends int8 where XNNPACK runs it
    f16 = pick_for_device(LITERT, published="float16", variants=["int8", "float32"])
    assert (f16.quantization, f16.variant) == ("int8", "int8")


def test_a_version_with_one_variant_leaves_no_choice() -> None:
    pick = pick_for_device(LEGACY, published="int8", variants=[])
    assert (pick.quantization, pick.variant) == ("int8", None)


def test_a_stored_runtime_that_no_longer_reads_counts_as_unreported() -> None:
    assert runtime_of({"package": "litert", "version": "1", "xnnpack_int8": True}) == (
        AgentRuntime(package="litert", version="1", xnnpack_int8=True))
    assert runtime_of({"package": "litert"}) is None
    assert runtime_of(None) is None


@pytest.mark.integration
@pytest.mark.hub
def test_release_signs_every_variant_and_desired_names_it_per_runtime(
    broker: Broker, hub: Hub
) -> None:
    name, version = hub.register(variant_artifact(), name="pump-ae")
    with Session(hub.engine) as session:
        for device, runtime in (("dev-lite", LITERT), ("dev-legacy", LEGACY), ("dev-old", None)):
            row = ensure_devices(session, [device])[device]
            row.runtime = None if runtime is None else runtime.to_dict()
            session.add(row)
        session.commit()
    sub = Subscriber(broker, "edgeloop/v1/#", client_id="variant-sub")
    try:
        with Session(hub.engine) as session:
            record = hub.releases.publish(session, get_model(session, name=name, version=version))
            [variant] = variants_of(session, record)
            assert variant.quantization == "float32"
            signed = manifest_from_dict(variant.manifest)
            assert signed.release == record.manifest["release"] and signed.signature
            assert signed.sha256 != record.manifest["sha256"]
            set_desired(session, releases=hub.releases, model=ModelRef(name=name, version=version),
                        device_ids=["dev-lite", "dev-legacy", "dev-old"])
            rows = ensure_devices(session, ["dev-lite", "dev-legacy", "dev-old"])
            assert {d: (r.desired_variant, r.desired_variant_reason is not None)
                    for d, r in rows.items()} == {
                "dev-lite": ("int8", True), "dev-legacy": ("float32", True),
                "dev-old": ("int8", True)}
        got: dict[str, bytes] = {}
        wanted = {hub.topics.desired(d) for d in ("dev-lite", "dev-legacy", "dev-old")} | {
            hub.topics.manifest(name, version, "float32")}
        while not wanted <= set(got):
            got.update(sub.collect(1))
        models = {d: json.loads(got[hub.topics.desired(d)])["model"]
                  for d in ("dev-lite", "dev-legacy", "dev-old")}
        assert models["dev-legacy"] == {"name": name, "version": version, "variant": "float32"}
        assert models["dev-lite"] == models["dev-old"] == {"name": name, "version": version}
        verify_manifest(parse_manifest(got[hub.topics.manifest(name, version, "float32")]),
                        {hub.signing_key.key_id: hub.signing_key.public_raw})
    finally:
        sub.close()
    with Session(hub.engine) as session:
        with pytest.raises(PublishRefused, match="no variant 'float16'"):
            set_desired(session, releases=hub.releases, device_ids=["dev-lite"],
                        model=ModelRef(name=name, version=version, variant="float16"))


@pytest.mark.integration
@pytest.mark.hub
def test_a_device_told_before_its_runtime_was_known_gets_its_variant_once_it_is(
    broker: Broker, hub: Hub
) -> None:
    """Desired set before the devices ever connected: the published variant, unnamed. Once
    their statuses name runtimes (as ingest stores them), the controller picks again: the
    legacy device is sent float32 with the config it had, the litert one keeps int8 and only
    its reason changes."""
    name, version = hub.register(variant_artifact(), name="pump-ae")
    ref = ModelRef(name=name, version=version)
    devices = ["dev-new-legacy", "dev-new-lite"]
    with Session(hub.engine) as session:
        hub.releases.publish(session, get_model(session, name=name, version=version))
        set_desired(session, releases=hub.releases, model=ref, device_ids=devices,
                    config={"sample_hz": 10})
        rows = ensure_devices(session, devices)
        assert {r.desired_variant_reason for r in rows.values()} == {NO_RUNTIME_REASON}
    sub = Subscriber(broker, "edgeloop/v1/+/+/desired", client_id="repick-sub")
    try:
        sub.collect(2)  # the retained desired of both, as first sent
        with Session(hub.engine) as session:
            rows = ensure_devices(session, devices)
            rows["dev-new-legacy"].runtime = LEGACY.to_dict()
            rows["dev-new-lite"].runtime = LITERT.to_dict()
            session.add_all(rows.values())
            session.commit()
        desired = json.loads(sub.collect(1, timeout=30.0)[hub.topics.desired("dev-new-legacy")])
        assert desired["model"] == {"name": name, "version": version, "variant": "float32"}
        assert desired["config"] == {"sample_hz": 10}

        def picked() -> dict[str, tuple[str | None, str | None]]:
            with Session(hub.engine) as session:
                return {d: (r.desired_variant, r.desired_variant_reason)
                        for d, r in ensure_devices(session, devices).items()}

        # desired is published before the rows are committed: wait for both rows
        wait_for(lambda: NO_RUNTIME_REASON not in {r for _, r in picked().values()},
                 timeout=30.0)
        now = picked()
        assert now["dev-new-legacy"][0] == "float32"
        assert "tflite-runtime" in str(now["dev-new-legacy"][1])
        assert now["dev-new-lite"][0] == "int8" and "litert" in str(now["dev-new-lite"][1])
        assert hub.rollouts.repick() == []  # nothing is left to pick again
        with pytest.raises(AssertionError, match="received 0 of 1"):
            sub.collect(1, timeout=1.0)  # and the litert device was not sent anything new
    finally:
        sub.close()
