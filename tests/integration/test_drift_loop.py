"""The closed loop on real parts: a recalibrated device's drift is detected on the device, the
hub retrains on its recent readings, the new version passes the parity gate, is canaried and
promoted; the other device keeps its model. About a minute and a half (two trainings in child
processes on the secure harness, a 30 s drift reference and a 20 s drift hold).

The pumps cycle fast here (a 5 s "day", a new load every second on average): every stretch the
loop looks at (the 30 s of history the first model learns, the 30 s drift reference, the 20 s
held drift the new model learns) then holds their whole normal range, however the machine's
load paces the steps. With the profile's 120 s day and 12 s loads, a 15 s reference saw one or
two load levels, so the other device's next load change was a "drift" sooner or later (it was
retrained when CI ran slowly), and a model learned from 20 s of one load level raised alarms on
the others (its canary was rolled back)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from cloud_hub.cli.client import HubClient
from simulator.broker import Broker
from simulator.enroll import hub_enrollment
from simulator.fleet import DeviceSpec, Fleet
from simulator.loop import publish_model, roll_out, train_model, wait_for_telemetry
from tests.integration.support import wait_for

pytestmark = [pytest.mark.integration, pytest.mark.hub]

DEVICES = ["pump-001", "pump-002"]
SPEC = {"family": "pca", "window": 10, "latent": 16, "smoothing": 10,
        "threshold_quantile": 0.999, "threshold_factor": 1.5, "compare_modes": False,
        "quantization": "float32"}  # an int8 model from 30 s of data can miss the parity gate
# blocks of 1 s, a 30-block reference and a Page-Hinkley threshold of 30 reference spreads: a
# recalibration is seen in about 10 blocks, and the fast-cycling pump's normal variation stays
# far from the threshold (see the module's docstring)
DRIFT = {"summary_interval_s": 1.0, "block_s": 1.0, "reference_blocks": 30, "threshold": 30.0}


@pytest.fixture
def fleet(broker: Broker, client: HubClient, tmp_path: Path) -> Iterator[Fleet]:
    key = client.get("/signing-key")
    f = Fleet(mqtt_host=broker.host, mqtt_port=broker.port,
              mqtt_auth=hub_enrollment(client, tmp_path / "bundles"),
              state_root=tmp_path / "agents", trust_keys={key["key_id"]: key["public_key"]},
              overrides={"drift": DRIFT})
    for i, device_id in enumerate(DEVICES):
        f.add(DeviceSpec(device_id=device_id, seed=40 + i, rate_hz=20.0, history_s=30.0,
                         day_period_s=5.0, load_dwell_s=1.0))
    f.start()
    try:
        yield f
    finally:
        f.stop()


def _run(client: HubClient) -> dict[str, Any] | None:
    runs = client.get_all("/retrain-runs")
    done = [r for r in runs if r["finished_at"] is not None]
    return done[0] if done else None


def test_drift_is_detected_retrained_canaried_and_promoted(
    client: HubClient, fleet: Fleet,
) -> None:
    quiet = Console(file=io.StringIO())
    wait_for_telemetry(client, fleet, min_seconds=30.0, timeout=90.0)
    ref = train_model(client, quiet, name="pump-ae", devices=DEVICES, until=time.time(),
                      spec=SPEC, timeout=240.0)
    publish_model(client, ref, lambda _text: None)
    roll_out(client, fleet, ref, lambda _text: None, timeout=90.0)
    client.put("/retrain-policies/default", {
        "drift_hold_s": 20, "max_anomaly_rate_ratio": None, "scope": "drifted",
        "recent_s": 300, "rollout": {"canary_size": 1, "min_observation_s": 5,
                                     "max_anomaly_rate_increase": 30}})
    wait_for(lambda: all(d["state"] == "stable" for d in client.get_all("/drift"))
             and len(client.get_all("/drift")) == 2, 120.0, "both devices past their reference")
    source = fleet.devices["pump-001"].source
    source.recalibrate(source.next_ts + 0.5, {"flow": 4.0, "pressure_out": -3.0})

    drifting = wait_for(lambda: [d for d in client.get_all("/drift", state="drift")
                                 if d["device_id"] == "pump-001"], 120.0,
                        "the drift of pump-001 seen by the hub")
    detected_at = drifting[0]["since"]
    run = wait_for(lambda: _run(client), 240.0, "the retraining run to finish")
    steps = [s["step"] for s in run["steps"]]
    assert run["state"] == "promoted", run["steps"]
    assert steps == ["triggered", "training", "parity_gate", "released", "canary", "promoted"]
    assert run["trigger"] == "drift" and run["devices"] == ["pump-001"]
    devices = {d["device_id"]: d for d in client.get_all("/devices")}
    assert devices["pump-001"]["active_model"]["version"] == ref[1] + 1
    assert devices["pump-002"]["active_model"]["version"] == ref[1], "not drifted: not retrained"
    assert all("pump-002" not in r["devices"] for r in client.get_all("/retrain-runs"))
    status = fleet.statuses()["pump-001"]
    assert status["active_model"]["version"] == ref[1] + 1
    # a new model: what is normal is learned again (a new reference, begun after the drift);
    # the recalibrated readings are its normal, so no drift comes back
    assert status["drift"]["state"] in ("warming", "stable"), status["drift"]
    assert status["drift"]["since"] > detected_at, status["drift"]
