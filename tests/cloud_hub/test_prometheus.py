"""The Prometheus files in deploy/prometheus against a real Prometheus (Debian's; `make test`
installs it): the alert rules pass ``promtool check`` and their unit tests, name only metrics a
hub exposes, and the shipped scrape configuration, pointed at a real hub on the secure broker,
scrapes it with a read key as bearer token: ``up`` is 1, the stored readings and the leases read
back as the hub counts them, every rule loads, and a healthy hub raises no alert."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from cloud_hub.cli.serve import serve_in_thread
from cloud_hub.service import Hub
from shared.messages import TelemetryBatch, encode
from simulator.broker import Broker
from simulator.ports import free_port
from simulator.process import log_tail, start_child, terminate
from tests.cloud_hub.conftest import ADMIN_KEY, started_hub
from tests.cloud_hub.helpers import publish_wait, publisher_client, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.hub]
DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "prometheus"
RULES = DEPLOY / "edgeloop-hubs.rules.yml"
DASHBOARD = DEPLOY.parent / "grafana" / "edgeloop-hubs.json"
# Panels that must show data for one hub that stored a few batches (the others may be empty:
# no drops, no errors, no rates over too short a history).
MUST_SHOW = {"Inbox (received, not stored yet)", "Hub processes up", "Job leases",
             "Resident memory", "MQTT connection", "Messages the broker holds",
             "Broker clients and traffic", "Devices by presence", "Messages held on the devices"}


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed (Debian: apt-get install prometheus; make test "
                    "installs it)")
    return found


def _promtool(*args: str) -> str:
    done = subprocess.run([_tool("promtool"), *args], cwd=DEPLOY, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_alert_rules_pass_promtools_check_and_their_unit_tests() -> None:
    assert "SUCCESS: 13 rules found" in _promtool("check", "rules", RULES.name)
    assert "SUCCESS" in _promtool("test", "rules", "edgeloop-hubs.rules.test.yml")


@pytest.fixture
def hub(broker: Broker, tmp_path: Path) -> Iterator[Hub]:
    with started_hub(broker, tmp_path / "hub", maintenance_tick_s=0.5) as h:
        yield h


def _dashboard() -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The Grafana dashboard and its panels (rows left out)."""
    dashboard = json.loads(DASHBOARD.read_text())
    return dashboard, [p for p in dashboard["panels"] if p["type"] != "row"]


def _dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, query) for every query of the dashboard, as Grafana sends it with every
    hub selected; and its alert annotation."""
    dashboard, panels = _dashboard()
    queries = [(p["title"], t["expr"]) for p in panels for t in p["targets"]]
    queries += [(a["name"], a["expr"]) for a in dashboard["annotations"]["list"]]
    return [(title, expr.replace("$instance", ".*")) for title, expr in queries]


def test_the_dashboard_is_laid_out_and_every_panel_queries_the_chosen_prometheus() -> None:
    dashboard, panels = _dashboard()
    assert dashboard["uid"] == "edgeloop-hubs"
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource", "instance"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    cells: set[tuple[int, int]] = set()
    for p in dashboard["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        mine = {(x, y) for x in range(g["x"], g["x"] + g["w"])
                for y in range(g["y"], g["y"] + g["h"])}
        assert not mine & cells, f"{p['title']} overlaps another panel"
        cells |= mine
    for p in panels:
        assert p["description"] and p["targets"], p["title"]
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]
            # per hub: the chosen hubs; the broker's and the fleet's: one value, max over hubs
            assert ("$instance" in t["expr"] or re.match(r"max\b", t["expr"])
                    or "up{" in t["expr"]), f"{p['title']}: a per-hub query ignores the hubs chosen"
    assert MUST_SHOW <= {p["title"] for p in panels}


def test_the_rules_and_the_dashboard_name_only_metrics_a_hub_exposes(hub: Hub) -> None:
    wait_for(lambda: "uptime_s" in hub.metrics()["broker"], 20, "the broker's figures")
    exposed = {line.split()[2] for line in hub.metrics_text().splitlines()
               if line.startswith("# TYPE ")}
    families = {re.sub(r"_total$", "", name) for name in exposed}
    rules = [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    used = {name for rule in rules
            for name in re.findall(r"\bedgeloop_(?:hub|broker|fleet)_\w+", rule["expr"])}
    assert {n.split("_")[1] for n in used} == {"hub", "broker", "fleet"}, used
    on_dashboard = {name for _title, expr in _dashboard_queries()
                    for name in re.findall(r"\b(?:edgeloop_(?:hub|broker|fleet)|process)_\w+",
                                           expr)}
    assert {"process_cpu_seconds_total", "edgeloop_broker_store_messages"} <= on_dashboard
    for name in used | on_dashboard:
        base = re.sub(r"_(bucket|sum|count)$", "", name)
        assert name in exposed or base in families, f"{name} is not in the hub's exposition"


class Prometheus:
    """A Prometheus of our own on a free port, with its data in a temporary directory."""

    def __init__(self, config: Path, work: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = work / "prometheus.log"
        with self.log.open("wb") as out:
            self.proc = start_child(
                [_tool("prometheus"), f"--config.file={config}",
                 f"--storage.tsdb.path={work / 'data'}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=out, stderr=subprocess.STDOUT)

    def query(self, expr: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        answer.raise_for_status()
        result: list[dict[str, Any]] = answer.json()["data"]["result"]
        return result

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            pytest.fail(f"prometheus exited:\n{log_tail(self.log, 30)}")
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        terminate(self.proc, 10.0, "prometheus")


def _scrape_config(work: Path, target: str, key: str) -> Path:
    """The shipped configuration, with this test's target, key file and a 1-s interval."""
    config = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(RULES)]
    (job,) = config["scrape_configs"]
    key_file = work / "read-key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    job["authorization"]["credentials_file"] = str(key_file)
    job["static_configs"] = [{"targets": [target]}]
    path = work / "prometheus.yml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_shipped_scrape_configuration_reads_a_real_hub(
    broker: Broker, hub: Hub, tmp_path: Path,
) -> None:
    server = serve_in_thread(hub)
    prometheus = None
    try:
        created = httpx.post(f"{server.base_url}/api/v1/api-keys",
                             json={"name": "prometheus", "scope": "read"},
                             headers={"X-API-Key": ADMIN_KEY}, timeout=30)
        assert created.status_code == 201, created.text
        target = server.base_url.removeprefix("http://")
        config = _scrape_config(tmp_path, target, created.json()["key"])
        _promtool("check", "config", str(config))
        client = publisher_client(broker)
        try:
            for seq in range(3):
                publish_wait(client, hub.topics.telemetry("pump-9"), encode(TelemetryBatch(
                    device_id="pump-9", epoch="0123456789abcdef", seq=seq, channels=["a", "b"],
                    ts=[100.0 + 2 * seq, 101.0 + 2 * seq], values=[[1.0, 2.0], [3.0, 4.0]])))
        finally:
            client.disconnect()
            client.loop_stop()
        wait_for(lambda: hub.ingest.snapshot()["telemetry_readings"] == 6, what="6 readings")
        wait_for(lambda: all(hub.metrics()["leases"].values()), 30, "every lease held")

        prometheus = Prometheus(config, tmp_path)
        wait_for(prometheus.ready, 60, "prometheus ready")

        def scraped(expr: str) -> list[dict[str, Any]]:
            return prometheus.query(expr) if prometheus is not None else []

        up = wait_for(lambda: scraped('up{job="edgeloop-hubs"} == 1'), 60, "a scrape that worked")
        assert up[0]["metric"]["instance"] == target
        readings = wait_for(lambda: scraped("edgeloop_hub_telemetry_readings_stored_total"), 30,
                            "the readings counter scraped")
        assert float(readings[0]["value"][1]) == 6.0
        info = scraped("edgeloop_hub_info")[0]["metric"]
        assert info["client_id"] == hub.settings.mqtt_client_id
        assert info["lease_holder"] == hub.holder
        leases = wait_for(lambda: scraped("sum by (lease) (edgeloop_hub_lease_held)"), 30,
                          "the leases scraped")
        assert {r["metric"]["lease"]: float(r["value"][1]) for r in leases} == {
            lease: 1.0 for lease in hub.metrics()["leases"]}

        rules = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()["data"]
        loaded = [r for g in rules["groups"] for r in g["rules"]]
        assert len(loaded) == 13
        # The broker's figures, relayed by the hub, for the broker rules.
        granted = wait_for(lambda: scraped("edgeloop_broker_stats_subscribed"), 30,
                           "the broker's figures scraped")
        assert float(granted[0]["value"][1]) == 1.0
        # the 3 batches, in the broker's count (it publishes its figures every 10 s)
        wait_for(lambda: scraped("edgeloop_broker_publish_received_total >= 3"), 40,
                 "the broker's count of messages received")
        version = scraped("edgeloop_broker_info")[0]["metric"]["version"]
        assert version.startswith("mosquitto version 2."), version
        # Every query of the Grafana dashboard runs; those of the panels in MUST_SHOW give
        # series for this hub.
        for title, expr in _dashboard_queries():
            answer = httpx.get(f"{prometheus.url}/api/v1/query", params={"query": expr},
                               timeout=10).json()
            assert answer["status"] == "success", (title, expr, answer)
            if title in MUST_SHOW:
                wait_for(partial(scraped, expr), 30, f"data for the panel {title!r}")
        time.sleep(3.0)  # a few evaluations of every rule
        rules = httpx.get(f"{prometheus.url}/api/v1/rules", timeout=10).json()["data"]
        for rule in (r for g in rules["groups"] for r in g["rules"]):
            assert rule["health"] == "ok", rule
            assert rule["state"] == "inactive", rule  # nothing pending or firing
    finally:
        if prometheus is not None:
            prometheus.stop()
        server.stop()
