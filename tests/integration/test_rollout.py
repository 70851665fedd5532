"""Staged rollouts on real parts: mosquitto, ``cloud-hub serve``, four edge agents, TFLite.

A good model is promoted through the canary and every wave. Then a deliberately bad model (its
threshold far too low, so it flags almost every window) breaches the canary's anomaly-rate
policy: the hub sets `desired` back on the canary device, and the rollout ends `rolled_back` only
once that device reports the previous model active again; the other devices never got it.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from cloud_hub.cli.client import HubClient
from simulator.broker import Broker
from simulator.enroll import hub_enrollment
from simulator.fleet import DeviceSpec, Fleet
from simulator.loop import publish_model, train_model, wait_for_telemetry
from tests.integration.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.hub]

DEVICES = [f"pump-{i + 1:03d}" for i in range(4)]
GOOD_SPEC = {"family": "dense_ae", "window": 16, "hidden": 32, "latent": 8, "epochs": 3,
             "threshold_quantile": 0.999, "threshold_factor": 1.5, "compare_modes": False}
BAD_SPEC = {**GOOD_SPEC, "threshold_factor": 0.001}


@pytest.fixture
def fleet(broker: Broker, client: HubClient, tmp_path: Path) -> Iterator[Fleet]:
    key = client.get("/signing-key")
    f = Fleet(mqtt_host=broker.host, mqtt_port=broker.port,
              mqtt_auth=hub_enrollment(client, tmp_path / "bundles"),
              state_root=tmp_path / "agents",
              trust_keys={key["key_id"]: key["public_key"]})
    for i, device_id in enumerate(DEVICES):
        f.add(DeviceSpec(device_id=device_id, seed=i, rate_hz=10.0, history_s=60.0))
    f.start()
    try:
        yield f
    finally:
        f.stop()


def _rollout(client: HubClient, version: int, **policy: Any) -> dict[str, Any]:
    return dict(client.post("/rollouts", {
        "model": {"name": "it-pump", "version": version}, "target": {"devices": DEVICES},
        "policy": {"canary_size": 1, "wave_size": 2, "min_observation_s": 1.0, **policy},
    }))


def _finished(client: HubClient, rollout_id: int) -> dict[str, Any] | None:
    view: dict[str, Any] = client.get(f"/rollouts/{rollout_id}")
    return view if view["status"] in ("succeeded", "rolled_back", "aborted") else None


def test_good_model_is_promoted_and_a_noisy_canary_is_rolled_back(
    client: HubClient, fleet: Fleet
) -> None:
    quiet = Console(file=io.StringIO())
    say: Callable[[str], None] = lambda _text: None  # noqa: E731
    wait_for_telemetry(client, fleet, min_seconds=60.0, timeout=60.0)
    until = time.time()
    good = train_model(client, quiet, name="it-pump", devices=DEVICES, until=until,
                       spec=GOOD_SPEC, timeout=240.0)
    bad = train_model(client, quiet, name="it-pump", devices=DEVICES, until=until,
                      spec=BAD_SPEC, timeout=240.0)
    publish_model(client, good, say)
    publish_model(client, bad, say)

    first = _rollout(client, good[1])
    assert first["stage_sizes"] == [1, 2, 1]
    promoted = wait_for(lambda: _finished(client, first["id"]), 90.0, "the good rollout")
    assert promoted["status"] == "succeeded", promoted["reason"]
    assert promoted["devices_updated"] == len(DEVICES)
    # agents report the variant they run; a version with one variant is sent without naming it
    assert all(d["reported"] == {"name": "it-pump", "version": good[1], "variant": "int8"}
               for d in promoted["devices"])
    assert promoted["variants"] == {"int8": len(DEVICES)}

    second = _rollout(client, bad[1], min_observation_s=20.0, max_anomaly_rate_increase=5.0)
    rolled_back = wait_for(lambda: _finished(client, second["id"]), 90.0, "the rollback")
    assert rolled_back["status"] == "rolled_back"
    assert "anomaly rate" in rolled_back["reason"]
    canary = [d for d in rolled_back["devices"] if d["stage"] == 0]
    assert len(canary) == 1 and canary[0]["revert_confirmed_at"] is not None
    for d in rolled_back["devices"]:
        assert d["reported"] == {"name": "it-pump", "version": good[1], "variant": "int8"}, d
        assert d["desired"] == {"name": "it-pump", "version": good[1]}, d
    statuses = fleet.statuses()
    assert {s["active_model"]["version"] for s in statuses.values()} == {good[1]}
    anomalies = client.get_all("/anomalies", device_id=canary[0]["device_id"], limit=10_000)
    assert any(a["model_version"] == bad[1] for a in anomalies)
