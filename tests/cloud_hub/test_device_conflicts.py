"""A device id used by two sources is flagged on the device (issue 11 defect 5), and a device that
only lost its state is not. Real SQLite and PostgreSQL, the ingest store and the REST API; the
last test runs two real agents on a real broker."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from cloud_hub.cli import main as cli_main
from cloud_hub.cli.device_commands import _with_conflict_line
from cloud_hub.cli.serve import serve_in_thread
from cloud_hub.core.config import Settings
from cloud_hub.db.conflicts import conflicts_of
from cloud_hub.db.ingest_store import IngestBatch, StoreResult, store_batch
from cloud_hub.db.tables import DeadLetter, StreamMark
from cloud_hub.service import Hub
from shared.messages import TelemetryBatch
from simulator.broker import Broker
from tests.cloud_hub.api_support import api_client
from tests.cloud_hub.conftest import ADMIN_KEY
from tests.cloud_hub.helpers import enroll_devices, wait_for
from tests.pg import hub_engine

pytestmark = pytest.mark.hub
A, B = "00000000000000aa", "00000000000000bb"


def _t(seq: int, epoch: str, *, ts: float | None = None, device: str = "pump-1") -> TelemetryBatch:
    at = float(seq) if ts is None else ts
    return TelemetryBatch(device_id=device, epoch=epoch, seq=seq, channels=["a"], ts=[at],
                          values=[[at]])


def _store(engine: Engine, *telemetry: TelemetryBatch) -> StoreResult:
    with Session(engine) as session:
        return store_batch(session, IngestBatch(telemetry=list(telemetry)))


def _conflict(engine: Engine, device: str = "pump-1") -> tuple[str, str, int] | None:
    with Session(engine) as session:
        found = conflicts_of(session, [device]).get(device)
        return None if found is None else (found.kind, found.detail, found.count)


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """The hub's database; on PostgreSQL, ingest copies the keys of a stream sent once and
    inserts them ``ON CONFLICT`` when one arrives again."""
    with hub_engine(request.param, tmp_path) as made:
        yield made


def test_a_device_that_lost_its_state_starts_a_new_epoch_without_a_conflict(
    engine: Engine,
) -> None:
    _store(engine, _t(0, A), _t(1, A))
    _store(engine, _t(2, A), _t(0, B))  # the old epoch's last message, then the new one
    _store(engine, _t(2, A))  # the old epoch's last message again (a resend): nothing new
    result = _store(engine, _t(1, B), _t(2, B))
    assert result.conflicts == () and _conflict(engine) is None


def test_an_older_epoch_sending_after_a_newer_one_began_is_two_agents(engine: Engine) -> None:
    _store(engine, _t(0, A), _t(1, A))
    _store(engine, _t(0, B))
    result = _store(engine, _t(2, A), _t(1, B))
    assert result.conflicts == ("pump-1",)
    kind, detail, count = _conflict(engine) or ("", "", 0)
    assert kind == "epochs" and count == 1
    assert detail == (f"epoch {A} sent telemetry seq 2 after epoch {B} began: two agents use "
                      "device id 'pump-1', each with its own state")
    _store(engine, _t(3, A))
    assert _conflict(engine) is not None and _conflict(engine)[2] == 2  # type: ignore[index]


def test_two_epochs_first_heard_in_one_batch_still_show_the_conflict(engine: Engine) -> None:
    _store(engine, _t(0, A), _t(0, B))  # e.g. a hub's first batch after an outage
    assert _store(engine, _t(1, B)).conflicts == ("pump-1",)


def test_one_seq_twice_with_different_readings_is_two_copies_of_one_state(
    engine: Engine,
) -> None:
    _store(engine, _t(0, A), _t(1, A))
    assert _store(engine, _t(1, A)).conflicts == (), "the same message again: a resend"
    result = _store(engine, _t(1, A, ts=500.0))  # another device's reading under the same key
    assert result.conflicts == ("pump-1",) and result.duplicates == 1
    kind, detail, _count = _conflict(engine) or ("", "", 0)
    assert kind == "seq" and detail.startswith(f"epoch {A} seq 1 arrived twice with different "
                                               "readings")
    in_one_batch = _store(engine, _t(5, A, device="pump-2"), _t(5, A, ts=9.0, device="pump-2"))
    assert in_one_batch.conflicts == ("pump-2",)


def test_the_api_and_the_cli_show_the_conflict_with_the_device(
    engine: Engine, tmp_path: Path
) -> None:
    _store(engine, _t(0, A), _t(0, B))
    _store(engine, _t(1, A), _t(9, "00000000000000cc", device="pump-9"))
    hub = Hub(Settings(data_dir=tmp_path / "hub", admin_api_key=ADMIN_KEY), engine=engine)
    hub.ensure_admin_key()  # served, not started: no broker needed
    headers = {"X-API-Key": ADMIN_KEY}
    with api_client(hub) as api:
        device = api.get("/api/v1/devices/pump-1", headers=headers).json()
        listed = {d["device_id"]: d["conflict"]
                  for d in api.get("/api/v1/devices", headers=headers).json()}
    assert device["conflict"]["kind"] == "epochs" and device["conflict"]["count"] == 1
    assert device["conflict"]["epochs"] == [A, B]
    assert listed["pump-1"] == device["conflict"] and listed["pump-9"] is None
    line = _with_conflict_line(device, as_json=False)["conflict"]
    assert line.startswith(f"WARNING: epoch {A} sent telemetry seq 1 after epoch {B} began")
    assert "(seen 1 times, " in line
    assert _with_conflict_line(device, as_json=True) == device, "JSON keeps the record"


@pytest.mark.integration
def test_two_agents_with_one_device_id_are_flagged_on_the_device(
    broker: Broker, hub: Hub, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edge_agent.agent import Agent
    from tests.edge_agent.support import ScriptedSource, agent_config

    # An enrolled id: the hub refuses an unenrolled device's messages (dead letters) before
    # they reach the conflict check, which then never fires.
    enroll_devices(hub, ("twin",))
    first, second = [Agent(agent_config(broker, tmp_path / f"state-{i}", "twin", None),
                           source=ScriptedSource(10**9, rate_hz=20.0)) for i in range(2)]
    try:
        # In this order, whatever the load: the first agent's epoch is stored, then the second
        # agent takes the session (one client id) and its epoch begins; the first reconnects
        # (taking the session back) and sends new telemetry from the older epoch.
        first.start()
        wait_for(lambda: _epochs_of(hub.engine, "twin") == {first.outbox.epoch}, 60,
                 "the hub storing the first agent's telemetry")
        second.start()
        wait_for(lambda: _conflict(hub.engine, "twin") or _refused(hub.engine, "twin"), 60,
                 "the hub flagging device twin")
    finally:
        for agent in (first, second):
            agent.stop(timeout=1)
    assert _refused(hub.engine, "twin") == []
    kind, detail, _count = _conflict(hub.engine, "twin") or ("", "", 0)
    assert kind == "epochs" and "two agents use device id 'twin'" in detail
    epochs = {first.outbox.epoch, second.outbox.epoch}
    assert len(epochs) == 2 and all(e in detail for e in epochs), detail
    server = serve_in_thread(hub)
    try:
        assert cli_main(["--url", server.base_url, "--api-key", ADMIN_KEY, "devices", "show",
                         "twin"]) == 0
    finally:
        server.stop()
    out = capsys.readouterr().out
    assert "WARNING: epoch" in out and "two agents use device id 'twin'" in out, out


def _epochs_of(engine: Engine, device: str) -> set[str]:
    with Session(engine) as session:
        return set(session.exec(
            select(StreamMark.epoch).where(col(StreamMark.device_id) == device)))


def _refused(engine: Engine, device: str) -> list[str]:
    """Why the hub refused the device's messages (dead letters), if it did."""
    with Session(engine) as session:
        return sorted({r.reason for r in session.exec(select(DeadLetter)) if f"/{device}/" in
                       r.topic})
