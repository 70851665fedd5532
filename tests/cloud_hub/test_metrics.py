"""GET /api/v1/metrics: this hub process's figures, as JSON and in the Prometheus text format,
read back with Prometheus' own parser (prometheus_client), against a real hub on the secure
broker; and the histogram behind ``edgeloop_hub_ingest_commit_seconds``."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from cloud_hub.metrics.exposition import (
    FLEET_PREFIX,
    METRICS,
    NOT_EXPORTED,
    PREFIX,
    PROCESS_METRICS,
    render,
)
from cloud_hub.metrics.histogram import Histogram
from cloud_hub.service import Hub
from shared.messages import DeviceStatus, Heartbeat, Status, TelemetryBatch, encode
from simulator.broker import Broker
from tests.cloud_hub.conftest import ADMIN_KEY, api_client, started_hub
from tests.cloud_hub.helpers import publish_wait, publisher_client, wait_for

ADMIN = {"X-API-Key": ADMIN_KEY}
LEASES = {"rollouts", "training", "retained-desired", "incidents", "notifier", "retrain",
          "maintenance", "broker-audit"}


def parse(text: str) -> dict[str, list[Sample]]:
    """Family name -> its samples; the parser raises on anything malformed."""
    return {f.name: list(f.samples) for f in text_string_to_metric_families(text)}


def types(text: str) -> dict[str, str]:
    return {f.name: f.type for f in text_string_to_metric_families(text)}


def value(families: dict[str, list[Sample]], family: str, sample: str | None = None,
          **labels: str) -> float:
    name = sample or family
    found = [s.value for s in families[PREFIX + family]
             if s.name == PREFIX + name and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (family, name, labels, families[PREFIX + family])
    return found[0]


# -- the histogram and the text format, alone ----------------------------------------------

def test_histogram_buckets_are_upper_bounds_and_the_exposition_makes_them_cumulative() -> None:
    h = Histogram((0.1, 1.0))
    for v in (0.05, 0.1, 0.5, 1.0, 7.0):  # a value equal to a bound falls in that bucket
        h.observe(v)
    snap = h.snapshot()
    assert snap.counts == (2, 2, 1)
    assert snap.count == 5 and snap.total == pytest.approx(8.65)
    assert snap.cumulative() == [(0.1, 2), (1.0, 4), (math.inf, 5)]
    for bad in ((), (1.0, 0.5), (0.5, 0.5)):
        with pytest.raises(ValueError, match="increasing and distinct"):
            Histogram(bad)


def test_render_gives_typed_families_that_prometheus_parses() -> None:
    h = Histogram((0.01, 0.1))
    h.observe(0.004)
    h.observe(0.05)
    text = render({"client_id": "hub-a", "lease_holder": 'host:12:ab"c\\d\ne',
                   "session": "s1", "telemetry_readings": 1200, "mqtt_connected": True,
                   "last_commit_at": None, "uptime_s": 12.5, "acks_pending": 0,
                   "leases": {"rollouts": True, "maintenance": False},
                   "mqtt_error": "not a number: left out"}, commit_seconds=h.snapshot())
    families = parse(text)
    kinds = types(text)
    assert kinds[PREFIX + "telemetry_readings_stored"] == "counter"
    assert value(families, "telemetry_readings_stored", "telemetry_readings_stored_total") == 1200
    assert kinds[PREFIX + "mqtt_connected"] == "gauge"
    assert value(families, "mqtt_connected") == 1
    assert value(families, "uptime_seconds") == 12.5
    assert PREFIX + "last_commit_timestamp_seconds" not in families  # no value yet: left out
    # labels escaped and read back whole
    info = families[PREFIX + "info"][0]
    assert info.labels == {"client_id": "hub-a", "lease_holder": 'host:12:ab"c\\d\ne',
                           "session": "s1"}
    assert value(families, "lease_held", lease="rollouts") == 1
    assert value(families, "lease_held", lease="maintenance") == 0
    assert kinds[PREFIX + "ingest_commit_seconds"] == "histogram"
    buckets = {s.labels["le"]: s.value for s in families[PREFIX + "ingest_commit_seconds"]
               if s.name.endswith("_bucket")}
    assert buckets == {"0.01": 1, "0.1": 2, "+Inf": 2}
    assert value(families, "ingest_commit_seconds", "ingest_commit_seconds_count") == 2
    assert value(families, "ingest_commit_seconds", "ingest_commit_seconds_sum") == \
        pytest.approx(0.054)
    assert "not a number" not in text


def test_every_counter_is_named_total_and_every_name_is_once() -> None:
    names = [m.name for m in METRICS]
    assert len(names) == len(set(names))
    assert len({m.key for m in METRICS}) == len(METRICS)
    for m in (*METRICS, *PROCESS_METRICS):
        assert m.name.endswith("_total") == (m.kind == "counter"), m
    for m in METRICS:
        assert m.key not in NOT_EXPORTED, m


# -- a real hub ------------------------------------------------------------------------------

@pytest.fixture
def hub(broker: Broker, tmp_path: Path) -> Iterator[Hub]:
    """The suite's hub, with the maintenance job ticking (and so taking its lease) at once."""
    with started_hub(broker, tmp_path / "hub", maintenance_tick_s=0.5) as h:
        yield h


@pytest.fixture
def api(hub: Hub) -> Iterator[httpx.Client]:
    """No key by default: each request says how it authenticates."""
    with api_client(hub, key=None) as client:
        yield client


def _store_one_at_a_time(broker: Broker, hub: Hub) -> None:
    """Three batches and a truncated message, each sent once the one before is stored: four
    commits."""
    client = publisher_client(broker)
    try:
        for seq in range(3):
            batch = TelemetryBatch(device_id="pump-9", epoch="0123456789abcdef", seq=seq,
                                   channels=["a", "b"], ts=[100.0 + seq * 2, 101.0 + seq * 2],
                                   values=[[1.0, 2.0], [3.0, 4.0]])
            publish_wait(client, hub.topics.telemetry("pump-9"), encode(batch))
            wait_for(lambda n=seq + 1: hub.ingest.snapshot()["telemetry_batches"] == n,
                     what=f"batch {seq} stored")
        publish_wait(client, hub.topics.telemetry("pump-9"), b'{"v": 2, "truncated')
        wait_for(lambda: hub.ingest.snapshot()["dead_letters"] == 1, what="the dead letter")
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.mark.integration
@pytest.mark.hub
def test_every_figure_of_a_running_hub_is_exported_or_named_as_text(hub: Hub) -> None:
    figures = hub.metrics()
    numeric = {k for k, v in figures.items()
               if v is None or isinstance(v, int | float)} - NOT_EXPORTED
    catalogued = {m.key for m in METRICS}
    assert numeric - catalogued == set(), "figures missing from exposition.METRICS"
    assert catalogued - set(figures) == set(), "METRICS names figures the hub does not have"
    assert set(figures) - catalogued <= NOT_EXPORTED
    assert set(figures["leases"]) == LEASES


@pytest.mark.integration
@pytest.mark.hub
def test_prometheus_text_agrees_with_the_json_and_takes_a_bearer_key(
    broker: Broker, api: httpx.Client, hub: Hub,
) -> None:
    created = api.post("/api-keys", json={"name": "prometheus", "scope": "read"}, headers=ADMIN)
    assert created.status_code == 201, created.text
    bearer = {"Authorization": f"Bearer {created.json()['key']}"}
    _store_one_at_a_time(broker, hub)
    # A single hub takes every lease within its first ticks.
    wait_for(lambda: all(api.get("/metrics", headers=bearer).json()["leases"].values()), 30,
             "every job lease held")

    before: dict[str, Any] = api.get("/metrics", headers=bearer).json()
    scraped = api.get("/metrics", params={"format": "prometheus"}, headers=bearer)
    as_json: dict[str, Any] = api.get("/metrics", headers=bearer).json()
    assert scraped.status_code == 200, scraped.text
    assert scraped.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = parse(scraped.text)
    assert value(families, "telemetry_readings_stored", "telemetry_readings_stored_total") == 6
    assert value(families, "telemetry_batches_stored", "telemetry_batches_stored_total") == 3
    assert value(families, "dead_letters", "dead_letters_total") == 1
    assert value(families, "mqtt_connected") == 1
    for lease in LEASES:
        assert value(families, "lease_held", lease=lease) == 1
    info = families[PREFIX + "info"][0].labels
    assert info["client_id"] == hub.settings.mqtt_client_id == as_json["client_id"]
    assert info["lease_holder"] == hub.holder == as_json["lease_holder"]
    # Each committed transaction is in the histogram once; the figures that do not move
    # between the two reads agree with the JSON.
    commits = value(families, "ingest_commits", "ingest_commits_total")
    assert commits == 4
    assert value(families, "ingest_commit_seconds", "ingest_commit_seconds_count") == commits
    assert as_json["commits"] == commits
    assert value(families, "ingest_commit_seconds", "ingest_commit_seconds_sum") == \
        pytest.approx(as_json["commit_seconds_sum"])
    # Every counter of the text lies between the JSON read before it and the one after (a
    # counter of the hub's own jobs, such as the WAL checkpoints, may move between reads).
    for m in METRICS:
        if m.kind == "counter" and m.key in as_json:
            scraped_value = value(families, m.name.removesuffix("_total"), m.name)
            assert before[m.key] <= scraped_value <= as_json[m.key], m
    # What the process uses, under Prometheus' standard names (no edgeloop_ prefix).
    kinds = types(scraped.text)
    assert {m.key for m in PROCESS_METRICS} == set(as_json["process"])
    for m in PROCESS_METRICS:
        assert kinds[m.name.removesuffix("_total")] == m.kind, m
    own = {f.name: f.samples[0].value for f in text_string_to_metric_families(scraped.text)
           if f.name.startswith("process_")}
    assert own["process_cpu_seconds"] > 0
    assert own["process_cpu_seconds"] <= as_json["process"]["cpu_seconds"] + 5  # read first
    assert 30 * 2**20 < own["process_resident_memory_bytes"] < 4 * 2**30
    assert own["process_open_fds"] >= 3  # the broker's socket, the database, the API's
    assert own["process_threads"] >= 5  # ingest, paho's loop, the jobs, the API server


@pytest.mark.integration
@pytest.mark.hub
def test_metrics_refuse_a_missing_unknown_or_foreign_credential(api: httpx.Client) -> None:
    for headers in ({}, {"Authorization": "Bearer el_not-a-key"},
                    {"Authorization": "Basic YWRtaW46YWRtaW4="}):
        response = api.get("/metrics", params={"format": "prometheus"}, headers=headers)
        assert response.status_code == 401, (headers, response.text)
    assert "Authorization: Bearer" in api.get("/metrics").json()["detail"]
    wrong = api.get("/metrics", params={"format": "openmetrics"}, headers=ADMIN)
    assert wrong.status_code == 422
    assert wrong.json()["detail"][0]["loc"] == ["query", "format"]


@pytest.mark.integration
@pytest.mark.hub
def test_the_fleet_figures_come_from_the_database_at_each_scrape(broker: Broker, hub: Hub) -> None:
    """Devices by presence and what they hold unacknowledged, from their status records and
    last heartbeats as the hub stored them."""
    now = time.time()
    client = publisher_client(broker)
    try:
        for device_id, state, depth, age in (("pump-1", DeviceStatus.ONLINE, 5, 30.0),
                                             ("pump-2", DeviceStatus.ONLINE, 7, 90.0),
                                             ("pump-3", DeviceStatus.OFFLINE, 100, 5000.0)):
            publish_wait(client, hub.topics.status(device_id), encode(
                Status(device_id=device_id, state=state, at=now)), retain=True)
            publish_wait(client, hub.topics.heartbeat(device_id), encode(Heartbeat(
                device_id=device_id, at=now, uptime_s=60.0, rss_bytes=10**7,
                outbox_depth=depth, oldest_unsent_age_s=age, drops=0)))
    finally:
        client.disconnect()
        client.loop_stop()

    def fleet() -> dict[str, float]:
        return {(s.name + str(sorted(s.labels.items())) if s.labels else s.name): s.value
                for f in text_string_to_metric_families(hub.metrics_text())
                for s in f.samples if s.name.startswith(FLEET_PREFIX)}

    # Status records (retained, on their own subscription) and heartbeats can reach the hub
    # in either order: wait for both.
    online, offline = (FLEET_PREFIX + f"devices[('state', '{state}')]"
                       for state in ("online", "offline"))
    seen = wait_for(lambda: (f := fleet()).get(FLEET_PREFIX + "outbox_messages") == 112
                    and (f.get(online), f.get(offline)) == (2, 1) and f,
                    30, "the three heartbeats and status records stored")
    assert seen[FLEET_PREFIX + "devices[('state', 'silent')]"] == 0
    # the oldest message held on an online device: pump-3's is on a device that is offline
    assert seen[FLEET_PREFIX + "oldest_unsent_seconds"] == 90.0
    assert seen[FLEET_PREFIX + "devices_with_open_incidents"] == 0
    assert "fleet" not in hub.metrics()  # the JSON is this process's own figures
