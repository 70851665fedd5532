"""The retraining loop on the hub: trigger rules, and every step of a run with its reason.

Devices are played through ingest (their telemetry, drift summaries and ``reported`` records go
through ``store_batch`` as MQTT ingest would store them); training is the tests' stand-in; the
release, the rollout controller and the loop are the hub's own.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import Session, select

from cloud_hub.cli import main as cli_main
from cloud_hub.db.drift_tables import RetrainRun
from cloud_hub.db.ingest_store import IngestBatch, store_batch
from cloud_hub.drift.triggers import DeviceDriftState, PolicyRules, device_trigger
from cloud_hub.service import Hub
from shared.messages import (
    DriftState,
    DriftSummary,
    ModelRef,
    ModelState,
    Reported,
    ReportedModel,
    TelemetryBatch,
)
from simulator.broker import Broker
from tests.cloud_hub.api_support import serving
from tests.cloud_hub.conftest import ADMIN_KEY, hub_settings
from tests.cloud_hub.helpers import (
    enroll_devices,
    stand_in_training,
    tiny_artifact,
    wait_for,
)

pytestmark = pytest.mark.hub
EPOCH = "00000000000000dd"
RULES = PolicyRules(drift_hold_s=60.0, max_anomaly_rate_ratio=5.0, min_anomaly_windows=100,
                    cooldown_s=600.0)


def _state(**changes: Any) -> DeviceDriftState:
    base: dict[str, Any] = dict(
        device_id="d", state="drift", since=1000.0, drifting=["flow"], period_end=1100.0,
        windows=500, anomalies=5, baseline_windows=500, baseline_anomalies=5,
        summary_model=("m", 1), active_model=("m", 1), busy=False, last_run_ended_at=None,
        updated_at=5000.0)
    return DeviceDriftState(**{**base, **changes})


def test_drift_held_long_enough_triggers_and_names_its_channels() -> None:
    trigger = device_trigger(_state(), RULES, now=5000.0)
    assert trigger is not None and trigger.kind == "drift" and trigger.since == 1000.0
    assert "drift on flow held 100 s" in trigger.reason
    assert device_trigger(_state(period_end=1050.0), RULES, now=5000.0) is None


def test_an_anomaly_rate_out_of_band_triggers() -> None:
    stable = dict(state="stable", since=None, drifting=[])
    trigger = device_trigger(_state(**stable, anomalies=40), RULES, now=5000.0)
    assert trigger is not None and trigger.kind == "anomaly_rate"
    assert "8.00 % of windows is above 5 × its baseline 1.00 %" in trigger.reason
    assert device_trigger(_state(**stable, anomalies=20), RULES, now=5000.0) is None
    assert device_trigger(_state(**stable, anomalies=40, windows=50, baseline_anomalies=0),
                          RULES, now=5000.0) is None, "too few windows to judge"


@pytest.mark.parametrize("changes", [
    {"busy": True},
    {"summary_model": ("m", 0)},  # a summary about the model the device ran before
    {"active_model": None},
    {"last_run_ended_at": 4900.0},  # within the cooldown
    {"last_run_ended_at": 3000.0, "updated_at": 2900.0},  # summary older than the last run
])
def test_nothing_triggers_for_a_device_busy_stale_or_cooling_down(
    changes: dict[str, Any],
) -> None:
    assert device_trigger(_state(**changes), RULES, now=5000.0) is None


@pytest.fixture
def hub(broker: Broker, tmp_path: Path) -> Iterator[Hub]:
    h = Hub(hub_settings(broker, tmp_path / "hub", retrain_tick_s=0.1),
            run_training=stand_in_training())
    enroll_devices(h, ("pump-1", "pump-2", "pump-3"))
    h.start()
    try:
        yield h
    finally:
        h.stop()


def _store(hub: Hub, **lists: Any) -> None:
    with Session(hub.engine) as session:
        store_batch(session, IngestBatch(**lists))


def _report(hub: Hub, device: str, version: int) -> None:
    _store(hub, reported=[Reported(
        device_id=device, model=ReportedModel(name="pump-ae", version=version),
        state=ModelState.ACTIVE, since=time.time(),
        active=ReportedModel(name="pump-ae", version=version))])


def _devices_follow_desired(hub: Hub, devices: list[str]) -> None:
    """Each device reports active whatever its desired record names (a well-behaved fleet)."""
    from cloud_hub.db.tables import Device

    with Session(hub.engine) as session:
        for device_id in devices:
            d = session.get(Device, device_id)
            if d is not None and d.desired_version and d.desired_version != d.active_version:
                _report(hub, device_id, d.desired_version)


def test_drift_on_a_device_retrains_gates_canaries_and_promotes(hub: Hub) -> None:
    """pump-1's drift is held long enough; pump-3 drifted later (held for more than half the
    hold) and joins its run (one model from both devices' readings since each one's drift);
    pump-2 is stable and left alone."""
    devices = ["pump-1", "pump-2", "pump-3"]
    now = time.time()
    _store(hub, telemetry=[TelemetryBatch(
        device_id=d, epoch=EPOCH, seq=i, channels=["a", "b"],
        ts=[now - 400 + 10 * i + k / 10 for k in range(100)],
        values=[[float(k % 7), float(k % 5)] for k in range(100)]) for d in devices
        for i in range(40)])
    name, version = hub.register(tiny_artifact(), name="pump-ae")
    with Session(hub.engine) as session:
        from cloud_hub.registry.lifecycle import publish_model

        publish_model(session, name=name, version=version, releases=hub.releases)
    for d in devices:
        _report(hub, d, version)
    with serving(_app(hub)) as url:
        args = ["--url", url, "--api-key", ADMIN_KEY]
        assert cli_main([*args, "retrain", "policy", "--hold", "30", "--scope", "drifted",
                         "--rollout", '{"min_observation_s": 0.5}']) == 0
        model = ModelRef(name="pump-ae", version=version)
        _store(hub, drift=[
            DriftSummary(device_id="pump-1", epoch=EPOCH, seq=0, start=now - 60, end=now,
                         model=model, state=DriftState.DRIFT, since=now - 45,
                         drifting=["a"], windows=600, anomalies=60, baseline_windows=300,
                         baseline_anomalies=1),
            DriftSummary(device_id="pump-3", epoch=EPOCH, seq=0, start=now - 60, end=now,
                         model=model, state=DriftState.DRIFT, since=now - 20,
                         drifting=["b"], windows=600, anomalies=1, baseline_windows=300,
                         baseline_anomalies=1),
            DriftSummary(device_id="pump-2", epoch=EPOCH, seq=0, start=now - 60, end=now,
                         model=model, state=DriftState.STABLE, windows=600, anomalies=1,
                         baseline_windows=300, baseline_anomalies=1)])

        def finished() -> RetrainRun | None:
            _devices_follow_desired(hub, devices)
            with Session(hub.engine) as session:
                run = session.get(RetrainRun, 1)
                return run if run is not None and run.finished_at is not None else None

        run = wait_for(finished, 60.0, "the retraining run to finish")
        assert run.state == "promoted", run.steps
        assert run.trigger == "drift" and run.devices == ["pump-1", "pump-3"], "the drifted"
        assert run.steps[0]["device_since"] == {"pump-1": now - 45, "pump-3": now - 20}
        assert "in drift too: pump-3" in run.steps[0]["reason"]
        steps = [s["step"] for s in run.steps]
        assert steps == ["triggered", "training", "parity_gate", "released", "canary",
                         "promoted"]
        assert "drift on a held 45 s" in run.steps[0]["reason"]
        assert "(windows of anomaly events left out), each from its drift on" in run.steps[1][
            "reason"]
        assert run.model_version == version + 1
        from cloud_hub.db.tables import Device

        with Session(hub.engine) as session:
            device1, device2 = session.get(Device, "pump-1"), session.get(Device, "pump-2")
            assert device1 is not None and device1.active_version == version + 1
            assert device2 is not None and device2.active_version == version
            device3 = session.get(Device, "pump-3")
            assert device3 is not None and device3.active_version == version + 1
            from cloud_hub.db.registry_tables import ModelVersion, TrainingJob

            job = session.get(TrainingJob, run.training_job_id)
            assert job is not None
            assert job.request.device_since == {"pump-1": now - 45, "pump-3": now - 20}
            trained = session.exec(select(ModelVersion).where(
                ModelVersion.name == name, ModelVersion.version == version + 1)).one()
            assert trained.training["devices"] == ["pump-1", "pump-3"]
            assert trained.training["device_since"] == {"pump-1": now - 45, "pump-3": now - 20}
            assert trained.training["since"] >= now - 45, "pump-1 from its drift on"

        assert cli_main([*args, "retrain", "show", "1"]) == 0
        assert cli_main([*args, "drift"]) == 0
        assert cli_main([*args, "--json", "drift", "show", "pump-1"]) == 0


def test_an_operator_starts_a_run_and_a_failing_gate_is_recorded(
    broker: Broker, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    hub = Hub(hub_settings(broker, tmp_path / "hub", retrain_tick_s=0.1),
              run_training=stand_in_training(agreement=0.5))
    enroll_devices(hub, ("pump-9",))
    hub.start()
    try:
        now = time.time()
        _store(hub, telemetry=[TelemetryBatch(
            device_id="pump-9", epoch=EPOCH, seq=i, channels=["a", "b"],
            ts=[now - 400 + 10 * i + k / 10 for k in range(100)],
            values=[[float(k % 7), float(k % 5)] for k in range(100)]) for i in range(40)])
        name, version = hub.register(tiny_artifact(), name="pump-ae")
        _report(hub, "pump-9", version)
        with serving(_app(hub)) as url:
            args = ["--url", url, "--api-key", ADMIN_KEY]
            assert cli_main([*args, "retrain", "start", "--devices", "pump-9",
                             "--reason", "sensors recalibrated"]) == 0
            assert "operator" in capsys.readouterr().out

            def finished() -> RetrainRun | None:
                with Session(hub.engine) as session:
                    run = session.get(RetrainRun, 1)
                    return run if run is not None and run.finished_at is not None else None

            run = wait_for(finished, 60.0, "the run to finish")
            assert run.state == "failed"
            assert "parity gate" in run.steps[-1]["reason"]
            assert run.requested_by and "sensors recalibrated" in run.reason
            assert cli_main([*args, "retrain", "runs"]) == 0
            assert "parity gate" in capsys.readouterr().out
    finally:
        hub.stop()


def _app(hub: Hub) -> Any:
    from cloud_hub.api.main import create_app

    return create_app(hub)


def test_training_leaves_out_faults_but_not_a_drift_s_false_alarms(hub: Hub) -> None:
    import numpy as np

    from cloud_hub.jobs.training_sets import normal_runs
    from shared.messages import AnomalyEvent

    ts = np.arange(0.0, 100.0, 0.1)

    def event(seq: int, start: float, score: float) -> AnomalyEvent:
        return AnomalyEvent(device_id="pump-1", epoch=EPOCH, seq=seq, ts=(start, start + 1.0),
                            score=score, threshold=1.0, model=ModelRef(name="m", version=1),
                            channels=[], detected_at=start + 1.0)

    _store(hub, anomalies=[event(0, 50.0, 4.0)])  # one fault: it and a window around it go
    with Session(hub.engine) as session:
        assert normal_runs(session, "pump-1", ts, min_rows=64) == [(0, 490), (521, 1000)]
    # then a drift: an event every second (false alarms of a model that no longer fits), and
    # a fault on top of it scoring far above them: only that one goes (the one of score 4 is
    # now below 3 × the events' median and is taken as part of the drift)
    _store(hub, anomalies=[event(1 + i, float(i), 1.5) for i in range(100) if i != 50]
           + [event(200, 70.0, 20.0)])
    with Session(hub.engine) as session:
        assert normal_runs(session, "pump-1", ts, min_rows=64) == [(0, 690), (721, 1000)]
