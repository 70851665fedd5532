"""Fenced leases: a job's tick that stalled past its lease while another hub process took the
job over and ran the same tick commits nothing and publishes nothing.

Each "hub" is what a hub process brings to the database: its own engine and lease holder. The
stalled tick waits on an Event at a chosen statement (an engine event of that hub only); the
test then ends its lease in the database (the ttl passing, without waiting for it), lets the
other hub take the job over and tick, and only then lets the stalled tick go on.

The tests of the jobs that make and ship models (rollouts, training jobs, retrain runs) are
test_lease_fencing_models.py's.
"""

from __future__ import annotations

import logging
import time

import httpx
import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from cloud_hub.core.states import DeliveryStatus, WebhookEvent
from cloud_hub.db.ingest_store import IngestBatch, store_batch
from cloud_hub.db.ops_tables import Incident, JobLease, WebhookDelivery, WebhookRule
from cloud_hub.db.tables import Anomaly
from cloud_hub.incidents.grouping import GroupingPolicy
from cloud_hub.incidents.job import IncidentTick
from cloud_hub.jobs.leased import LeasedWorker
from cloud_hub.notify.sender import DeliveryPolicy, WebhookSender
from shared.messages import AnomalyEvent, ModelRef
from tests.cloud_hub.helpers import _end_lease, _Stall, _two_workers, wait_for

pytestmark = pytest.mark.hub
EPOCH = "0123456789abcdef"


def _anomalies(engine: Engine, device: str, count: int) -> None:
    events = [AnomalyEvent(device_id=device, epoch=EPOCH, seq=i, ts=(i * 10.0, i * 10.0 + 1),
                           score=3.0, threshold=1.0, channels=["a"], detected_at=i * 10.0 + 1,
                           model=ModelRef(name="m", version=1)) for i in range(count)]
    with Session(engine) as session:
        store_batch(session, IngestBatch(anomalies=events))


def test_a_stalled_incident_tick_opens_nothing_once_another_hub_took_its_lease_over(
    two_hubs: list[Engine], caplog: pytest.LogCaptureFixture,
) -> None:
    """Both ticks see the same ungrouped events; only the one holding the lease at its commit
    opens an incident for them (before the fence, the stalled one opened a second)."""
    a_engine, b_engine = two_hubs
    _anomalies(a_engine, "pump-1", 3)
    stall = _Stall(a_engine, "INSERT INTO INCIDENTS")  # after reading the events, before writing
    policy = GroupingPolicy(gap_s=3600.0, quiet_s=3600.0)
    b_tick = IncidentTick(b_engine, policy)
    a, b = _two_workers("incidents", (a_engine, b_engine),
                        (IncidentTick(a_engine, policy), b_tick))
    a.start()
    try:
        assert stall.reached.wait(30), "hub-a's tick reached its first write"
        b.start()
        _end_lease(b_engine, "incidents")
        wait_for(lambda: b_tick.incidents_opened == 1, timeout=30,
                 what="hub-b taking the lease over and opening the incident")
        with caplog.at_level(logging.WARNING, logger="cloud_hub.jobs.leased"):
            stall.go()
            wait_for(lambda: not a.holding, timeout=30, what="hub-a's tick over")
            with Session(b_engine) as session:
                incidents = session.exec(select(Incident)).all()
                assert len(incidents) == 1, "the stalled tick opened a second incident"
                grouped = set(session.exec(select(Anomaly.incident_id)).all())
                assert grouped == {incidents[0].id}, "every event in hub-b's incident"
            wait_for(lambda: a.lost == 1, timeout=30, what="hub-a's commit refused")
        assert any("no longer held by hub-a" in r.getMessage() for r in caplog.records)
        assert a.errors == 0, "a lost lease is a warning, not a failed tick"
    finally:
        stall.go()
        a.stop()
        b.stop()


def test_a_tick_that_outlived_its_lease_commits_when_no_other_hub_took_it_over(
    two_hubs: list[Engine], caplog: pytest.LogCaptureFixture,
) -> None:
    """One hub, its tick slower than the lease (the bench's overload on PostgreSQL): the lease
    expired with nobody taking it over, so the tick's writes commit and the lease is renewed;
    with the fence that also required an unexpired lease, they were rolled back and done again."""
    engine = two_hubs[0]
    _anomalies(engine, "pump-1", 3)
    stall = _Stall(engine, "INSERT INTO INCIDENTS")
    tick = IncidentTick(engine, GroupingPolicy(gap_s=3600.0, quiet_s=3600.0))
    worker = LeasedWorker(engine, name="incidents", tick=tick, interval_s=0.05,
                          lease_ttl_s=1.0, holder="hub-a")
    worker.start()
    try:
        assert stall.reached.wait(30), "the tick reached its first write"
        with Session(engine) as session:
            lease = session.get(JobLease, "incidents")
            assert lease is not None and lease.holder == "hub-a"
            expired_at = lease.expires_at
        # Past the lease's expiry by the wall clock, which is what the fence compares with
        wait_for(lambda: time.time() > expired_at + 0.5, timeout=30,
                 what="the stalled tick outliving its lease")
        with caplog.at_level(logging.WARNING, logger="cloud_hub.db.leases"):
            stall.go()
            wait_for(lambda: tick.incidents_opened == 1, timeout=30, what="the incident opened")
            # not silent: the late renewal is named, though nothing was lost
            wait_for(lambda: any("incidents: renewed its lease" in r.getMessage()
                                 and "after it had expired (a 1-s lease)" in r.getMessage()
                                 for r in caplog.records), timeout=30, what="the warning")
        assert worker.lease.late_renewals == 1
        assert worker.lost == 0, "the tick's commit was refused: nobody else held the lease"
        assert worker.errors == 0
        with Session(engine) as session:
            assert len(session.exec(select(Incident)).all()) == 1
            lease = session.get(JobLease, "incidents")
            assert lease is not None and lease.holder == "hub-a"
            assert lease.expires_at > expired_at, "the fence renewed the lease"
    finally:
        stall.go()
        worker.stop()


def test_a_stalled_notifier_sends_nothing_once_another_hub_took_its_lease_over(
    two_hubs: list[Engine],
) -> None:
    """hub-a reads a due delivery and stalls before sending it; hub-b takes over, sends it and
    records it. hub-a then sends nothing (before the fence, the receiver got it twice)."""
    a_engine, b_engine = two_hubs
    received: list[str] = []

    def receiver(request: httpx.Request) -> httpx.Response:
        received.append(request.headers["X-Edgeloop-Delivery"])
        return httpx.Response(204)

    with Session(a_engine) as session:
        rule = WebhookRule(name="ops", url="http://receiver.test/hook", secret="s" * 32,
                           created_at=1.0)
        session.add(rule)
        session.flush()
        incident = Incident(device_id="pump-1", started_at=1.0, ended_at=2.0, opened_at=1.0,
                            last_event_at=1.0, updated_at=1.0, peak_score=3.0,
                            peak_threshold=1.0, model_name="m", model_version=1)
        session.add(incident)
        session.flush()
        assert rule.id is not None and incident.id is not None
        session.add(WebhookDelivery(rule_id=rule.id, incident_id=incident.id,
                                    event=WebhookEvent.INCIDENT_OPENED, body="{}",
                                    created_at=1.0, next_attempt_at=1.0))
        session.commit()
    stall = _Stall(a_engine, "SELECT WEBHOOK_DELIVERIES", after=True)
    senders = [WebhookSender(e, DeliveryPolicy(), transport=httpx.MockTransport(receiver))
               for e in two_hubs]
    a, b = _two_workers("notifier", (a_engine, b_engine), (senders[0].tick, senders[1].tick))
    a.start()
    try:
        assert stall.reached.wait(30), "hub-a read the due delivery"
        b.start()
        _end_lease(b_engine, "notifier")

        def delivered() -> bool:
            with Session(b_engine) as session:
                return session.exec(select(WebhookDelivery.status)).one() \
                    == DeliveryStatus.DELIVERED

        wait_for(delivered, timeout=30, what="hub-b delivering it")
        stall.go()
        wait_for(lambda: not a.holding, timeout=30, what="hub-a's tick over")
        assert received == ["1"], "the delivery was sent once"
        wait_for(lambda: a.lost == 1, timeout=30, what="hub-a finding its lease lost")
    finally:
        stall.go()
        a.stop()
        b.stop()
        for s in senders:
            s.close()
