"""Model updates through the device core driven by hand (conftest.py's ``Device``): a desired
model arrives as manifest and chunks, is verified, shadowed and swapped in; a forged one is
refused; one that fails at run time is rolled back and reported; and the status names the
TFLite runtime that loads the models.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.keys import SignatureError
from shared.messages import Desired, ModelRef, Status, decode, encode
from shared.signing import SigningKey, generate_signing_key, verify_manifest
from tests.edge_agent.conftest import DEVICE, INT8, Device
from tests.edge_agent.support import TOPICS, fixture_bytes, make_manifest

NAN = fixture_bytes("nan_float32_w8c2.tflite")


def test_model_update_through_the_core_with_a_shadow_run(tmp_path: Path, key: SigningKey) -> None:
    dev = Device(tmp_path, key, model={"shadow_windows": 5})
    v1 = make_manifest(key, INT8, version=1, threshold=0.2)
    dev.desire(v1, INT8)
    assert dev.wire.reported().state.value == "shadow"
    assert dev.core.detector.active is None, "not swapped before the shadow run ends"
    dev.feed(20)
    reported = dev.wire.reported()
    assert reported.state.value == "active" and reported.active is not None
    assert reported.active.version == 1 and reported.active.sha256 == v1.sha256
    assert not any("/models/" in t for t in dev.wire.subscriptions), "download unsubscribed"
    v2 = make_manifest(key, INT8, version=2, threshold=0.2)
    dev.desire(v2, INT8)
    dev.feed(20)
    assert dev.wire.reported().active.version == 2  # type: ignore[union-attr]
    assert dev.core.status().active_model == {"name": "pump-ae", "version": 2,
                                              "sha256": v2.sha256, "variant": "int8"}
    assert dev.core.store.previous() is not None and dev.core.store.previous().version == 1


def test_model_with_a_forged_signature_is_refused_and_reported(
    tmp_path: Path, key: SigningKey
) -> None:
    dev = Device(tmp_path, key)
    forged = make_manifest(generate_signing_key(), INT8, threshold=0.2)
    with pytest.raises(SignatureError):
        verify_manifest(forged, {key.key_id: key.public_raw})
    ref = ModelRef(name=forged.name, version=forged.version)
    dev.deliver(TOPICS.desired(DEVICE), encode(Desired(device_id=DEVICE, model=ref,
                                                       issued_at=dev.clock.time())))
    dev.deliver(TOPICS.manifest(forged.name, forged.version), forged.to_bytes())
    reported = dev.wire.reported()
    assert reported.state.value == "failed" and reported.error is not None
    assert dev.core.detector.active is None
    assert dev.core.status().bad_messages == 1


def test_model_failing_at_run_time_is_rolled_back_and_reported(
    tmp_path: Path, key: SigningKey
) -> None:
    dev = Device(tmp_path, key)
    dev.desire(make_manifest(key, INT8, version=1, threshold=0.2), INT8)
    dev.desire(make_manifest(key, NAN, version=2, threshold=0.2), NAN)
    assert dev.core.detector.active is not None
    assert dev.core.detector.active.manifest.version == 2
    dev.feed(12)  # the tick takes the failure and rolls back
    reported = dev.wire.reported()
    assert reported.state.value == "rolled_back"
    assert reported.model is not None and reported.model.version == 2
    assert reported.active is not None and reported.active.version == 1
    assert reported.error is not None and "non-finite" in reported.error
    status = dev.core.status()
    assert status.model_state == "rolled_back" and status.last_error == reported.error
    windows = dev.core.detector.windows_scored
    dev.feed(10)
    assert dev.core.detector.windows_scored > windows, "the previous model scores again"



def test_the_first_status_names_the_installed_runtime_before_any_model_loads(
    tmp_path: Path, key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A device that has loaded no model yet tells the hub its runtime from its first status
    (so the hub sends a tflite-runtime device float32 from its first model on); the load that
    follows names the same runtime, and the status is not announced again for it."""
    import edge_agent.inference.runtime as runtime

    monkeypatch.setattr(runtime, "_cached", None)  # as in a process that has loaded no model
    dev = Device(tmp_path, key, model={"shadow_windows": 0})
    first = dev.wire.births[TOPICS.status(DEVICE)]
    assert callable(first)
    told = decode(Status, first()).runtime
    package = runtime.load_interpreter_class()[0]
    assert told is not None and told.package == package
    assert told.xnnpack_int8 == (package == "ai_edge_litert")
    assert told.version, "the version its .dist-info names"
    dev.desire(make_manifest(key, INT8, version=1, threshold=0.2), INT8)
    assert dev.wire.reported().state.value == "active"
    assert runtime.loaded_runtime() == told, "what loads is what was installed"
    assert dev.wire.births[TOPICS.status(DEVICE)] is first, "nothing new to announce"


def test_the_status_is_announced_again_when_the_loaded_runtime_is_another(
    tmp_path: Path, key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An installed package that is not the one that loads (or no runtime found before the
    load): the first model load names the real one and the status is announced again at once."""
    import edge_agent.inference.runtime as runtime

    monkeypatch.setattr(runtime, "_cached", None)
    import edge_agent.core

    monkeypatch.setattr(edge_agent.core, "installed_runtime", lambda: None)
    dev = Device(tmp_path, key, model={"shadow_windows": 0})
    first = dev.wire.births[TOPICS.status(DEVICE)]
    assert callable(first) and decode(Status, first()).runtime is None
    assert b"runtime" not in first(), "left out, so hubs of earlier builds accept it"
    dev.desire(make_manifest(key, INT8, version=1, threshold=0.2), INT8)
    assert dev.wire.reported().state.value == "active"
    again = dev.wire.births[TOPICS.status(DEVICE)]
    assert again is not first, "the status is announced again once the runtime is known"
    assert callable(again)
    told = decode(Status, again()).runtime
    assert told is not None and told.package == runtime.load_interpreter_class()[0]
    assert told.version, "the package's own version"
