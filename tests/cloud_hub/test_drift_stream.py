"""Drift summaries end to end: a real agent sends them through its outbox, the hub stores them,
keeps each device's latest drift state and acknowledges the stream like the others."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlmodel import Session, select

from cloud_hub.db.drift_tables import DeviceDrift, DriftSummaryRow
from cloud_hub.db.tables import Device
from cloud_hub.service import Hub
from edge_agent.agent import Agent
from simulator.broker import Broker
from tests.cloud_hub.helpers import wait_for
from tests.edge_agent.support import ScriptedSource, agent_config

pytestmark = pytest.mark.hub


def test_an_agent_s_drift_summaries_are_stored_and_acknowledged(
    hub: Hub, broker: Broker, tmp_path: Path,
) -> None:
    config = agent_config(broker, tmp_path / "agent", "pump-7", None,
                          drift={"summary_interval_s": 0.5, "block_s": 10.0,
                                 "reference_blocks": 5},
                          telemetry={"upload": "anomalies"})
    # readings 1 s apart in device time; pseudo-random values around a fixed level
    source = ScriptedSource(100_000, rate_hz=50.0,
                            value=lambda i: ((i * 7919) % 101 / 100.0, (i * 104729) % 97 / 96.0))
    agent = Agent(config, source=source)
    agent.start()
    try:
        def stored() -> list[DriftSummaryRow]:
            with Session(hub.engine) as session:
                return list(session.exec(select(DriftSummaryRow).where(
                    DriftSummaryRow.device_id == "pump-7")))

        rows = wait_for(lambda: len(stored()) >= 3 and stored(), 30.0, "3 drift summaries")
        assert rows[0].channels[0]["name"] == "a" and rows[0].readings > 0
        assert {r.epoch for r in rows} == {agent.outbox.epoch}
        wait_for(lambda: agent.status()["drift_summaries_stored"] >= 3, 20.0,
                 "the hub's acknowledgement of the drift stream")
        with Session(hub.engine) as session:
            state = session.get(DeviceDrift, "pump-7")
            device = session.get(Device, "pump-7")
            assert state is not None and state.state in ("warming", "stable")
            assert device is not None and device.telemetry_readings == 0, \
                "upload = anomalies: no readings leave the device"
        status = agent.status()["drift"]
        assert status["state"] in ("warming", "stable")
        beat = wait_for(lambda: _heartbeat(hub), 20.0, "a heartbeat with the drift state")
        assert beat["drift"]["state"] in ("warming", "stable")
    finally:
        agent.stop(timeout=10.0)
    assert agent.status()["outbox_depth"] == 0, "every summary acknowledged by the hub"


def _heartbeat(hub: Hub) -> dict[str, object] | None:
    with Session(hub.engine) as session:
        device = session.get(Device, "pump-7")
        beat = device.heartbeat if device else None
        return beat if beat and beat.get("drift") else None
