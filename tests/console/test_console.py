"""The operations console in a real browser (chromium + Playwright) against a real hub, a real
mosquitto and three real edge agents: log in, see the fleet, watch an anomaly arrive live,
acknowledge it, start a canary rollout and watch its waves, and check that a read key cannot
act and that device-supplied text is never run as markup."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest
from playwright.sync_api import expect
from sqlmodel import Session

from cloud_hub.rollouts.desired import set_desired
from shared.messages import (
    AnomalyEvent,
    DeviceStatus,
    ModelRef,
    ModelState,
    Reported,
    ReportedModel,
    Status,
    TelemetryBatch,
    encode,
)
from tests.cloud_hub.helpers import publish_wait, publisher_client, wait_for
from tests.console.conftest import DEVICES, Console, log_in

pytestmark = [pytest.mark.integration, pytest.mark.hub, pytest.mark.browser]
EPOCH = "00000000c0ffee00"

EPOCH = "00000000c0ffee00"  # the stream epoch of the hand-made messages
LIVE = 20_000  # ms: an SSE round (1 s) + grouping (0.2 s) + a fragment, with room for load


def test_operator_sees_the_fleet_and_a_live_anomaly_and_acknowledges_it(
    page: Any, console: Console
) -> None:
    log_in(page, console, path="/ui/fleet?q=pump-")
    expect(page.locator("#fleet-table tbody tr")).to_have_count(len(DEVICES))
    for device_id in DEVICES:
        expect(page.locator("#fleet-table")).to_contain_text(device_id)
    online = page.locator("a.tile[data-count=online] b")
    expect(online).to_have_text(str(len(DEVICES)), timeout=LIVE)
    headers = page.request.get(console.url + "/ui/fleet").headers
    assert "script-src 'self'" in headers["content-security-policy"]

    page.click("header nav >> text=Inbox")
    expect(page.locator("#live-status")).to_have_text("live", timeout=LIVE)
    expect(page.locator("#incident-table")).to_contain_text("No incident here")

    # pump-003 is told to run the model that flags every window: its agent downloads it,
    # verifies it, and sends real anomaly events; the inbox shows the incident without reload.
    with Session(console.hub.engine) as session:
        set_desired(session, releases=console.hub.releases, device_ids=["pump-003"],
                    model=ModelRef(name=console.noisy[0], version=console.noisy[1]))
    row = page.locator("#incident-table tbody tr[data-incident]").first
    expect(row).to_contain_text("pump-003", timeout=LIVE)
    expect(row).to_contain_text("open")
    expect(page.locator("#nav-counts .b-open")).to_have_text("1", timeout=LIVE)

    row.locator("a.strong").click()
    page.wait_for_url(re.compile(r".*/ui/incidents/\d+$"))
    expect(page.locator("#incident-chart canvas").first).to_be_visible(timeout=LIVE)
    page.fill("#ack-form textarea[name=note]", "checking the pump on site")
    # The panel is re-rendered on every live update (pump-003 keeps flagging): what the
    # operator typed stays through one.
    with page.expect_response(re.compile(r".*/ui/incidents/\d+/panel$")):
        page.evaluate("document.body.dispatchEvent(new Event('live-incidents'))")
    expect(page.locator("#ack-form textarea[name=note]")).to_have_value(
        "checking the pump on site")
    page.click("#ack-form button[type=submit]")
    panel = page.locator("#incident-panel")
    expect(panel).to_contain_text("acknowledged by bootstrap-admin")
    expect(panel).to_contain_text("checking the pump on site")
    expect(page.locator("#ack-form")).to_have_count(0)

    page.goto(console.url + "/ui/inbox")
    expect(page.locator("#incident-table tbody tr[data-incident]").first).to_contain_text(
        "ack by bootstrap-admin")


def test_operator_starts_a_canary_rollout_and_watches_the_waves(
    page: Any, console: Console
) -> None:
    log_in(page, console, path="/ui/rollouts")
    name, version = console.quiet
    page.select_option("#rollout-form select[name=model]", f"{name}:{version}")
    page.fill("#rollout-form input[name=devices]", ",".join(DEVICES))
    page.fill("#rollout-form input[name=canary_size]", "1")
    page.fill("#rollout-form input[name=wave_size]", "1")
    page.fill("#rollout-form input[name=min_observation_s]", "1")
    page.click("#rollout-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/ui/rollouts/\d+$"))

    waves = page.locator("#waves li")
    expect(waves).to_have_count(3)
    expect(waves.nth(0)).to_contain_text("canary")
    # The canary finishes before the first wave does: the page follows it live.
    expect(waves.nth(0)).to_have_attribute("data-state", "done", timeout=60_000)
    expect(page.locator("#rollout-body .pill").first).to_have_text("succeeded", timeout=60_000)
    for i in range(3):
        expect(waves.nth(i)).to_have_attribute("data-state", "done")
        expect(waves.nth(i)).to_contain_text("1/1 running")
    for device_id in DEVICES:
        expect(page.locator("#rollout-devices")).to_contain_text(device_id)

    # A second rollout of the same model onto the same devices is refused with the API's
    # own reason, shown on the form.
    page.goto(console.url + "/ui/rollouts")
    page.select_option("#rollout-form select[name=model]", f"{name}:{version}")
    page.fill("#rollout-form input[name=canary_size]", "0")
    page.click("#rollout-form button[type=submit]")
    expect(page.locator(".error").first).to_contain_text("canary_size")


def test_a_read_key_sees_everything_and_cannot_act(page: Any, console: Console) -> None:
    client = publisher_client(console.broker, client_id="test-read-key")
    try:
        event = AnomalyEvent(device_id="fan-7", epoch=EPOCH, seq=1,
                             ts=(time.time() - 2, time.time()), score=5.0, threshold=1.0,
                             model=ModelRef(name="fan", version=1), channels=["rpm"],
                             detected_at=time.time())
        publish_wait(client, console.hub.topics.anomalies("fan-7"), encode(event))
    finally:
        client.disconnect()
        client.loop_stop()
    wait_for(lambda: _incident_of(console, "fan-7"), timeout=15, what="fan-7's incident")
    incident_id = _incident_of(console, "fan-7")

    log_in(page, console, key=console.read_key, path=f"/ui/incidents/{incident_id}")
    expect(page.locator(".scope")).to_have_text("read")
    expect(page.locator("#read-only-note")).to_be_visible()
    expect(page.locator("#ack-form")).to_have_count(0)
    expect(page.locator("#resolve-form")).to_have_count(0)
    page.goto(console.url + "/ui/rollouts")
    expect(page.locator("#rollout-table")).to_be_visible()
    expect(page.locator("#rollout-form")).to_have_count(0)

    # The server refuses the action itself, even with the session's valid CSRF token.
    csrf = re.search(r'"X-CSRF-Token": "([^"]+)"', page.locator("body").get_attribute(
        "hx-headers") or "")
    assert csrf is not None
    answer = page.request.post(f"{console.url}/ui/incidents/{incident_id}/acknowledge",
                               form={"note": "x", "csrf_token": csrf.group(1)})
    assert answer.status == 403 and "only an admin key can act" in answer.text()
    # And without the token, even an admin session is refused (CSRF).
    page.context.clear_cookies()
    log_in(page, console, path=f"/ui/incidents/{incident_id}")
    refused = page.request.post(f"{console.url}/ui/incidents/{incident_id}/acknowledge",
                                form={"note": "forged"})
    assert refused.status == 403 and "CSRF" in refused.text()
    page.goto(console.url + f"/ui/incidents/{incident_id}")
    expect(page.locator("#incident-panel")).not_to_contain_text("forged")


def test_the_hubs_page_shows_the_processes_live_with_their_leases(
    page: Any, console: Console
) -> None:
    log_in(page, console, key=console.read_key, path="/ui/hubs")
    me = page.locator(f'#hubs-table tr[data-holder="{console.hub.holder}"]')
    expect(me).to_contain_text(console.hub.settings.mqtt_client_id)
    expect(me.locator(".pill").first).to_have_text("running")
    expect(me.locator(".leases")).to_contain_text("rollouts", timeout=LIVE)
    # The agents stream all along: the rate comes in with the page's own refresh.
    expect(me.locator(".reading-rate")).to_have_text(re.compile(r"^[1-9][\d,]*$"), timeout=LIVE)
    expect(me.locator(".cpu")).to_have_text(re.compile(r"^\d\.\d\d$"), timeout=LIVE)
    expect(me.locator(".rss")).to_have_text(re.compile(r"^[1-9][\d,]* MB$"))
    # The broker's figures, as the hub relays them: the hub and the agents are connected.
    broker = page.locator("#broker-line")
    expect(broker.locator(".clients")).to_have_text(re.compile(r"^[1-9][\d,]*$"), timeout=LIVE)
    expect(broker.locator(".dropped")).to_have_text("none dropped")
    # The hub audited the broker's credentials at start: nothing amiss.
    audit = page.locator("#credential-line")
    expect(audit.locator(".lacking")).to_have_text("every enrolled device has one", timeout=LIVE)
    expect(page.locator("#revocation-line")).to_have_count(0)

    # Another process that stopped reporting two minutes ago shows up, without a reload.
    from cloud_hub.db.ops_tables import HubProcessRecord

    with Session(console.hub.engine) as session:
        session.add(HubProcessRecord(
            holder="other-host:4242:deadbeef", client_id="hub-gone", host="other-host",
            pid=4242, version="0.1.0", started_at=time.time() - 600,
            seen_at=time.time() - 120, report_s=10.0, figures={
                "queue_depth": 7.0, "credential_audit_at": time.time(),
                "devices_without_credential": 2.0, "credentials_deleted": 1.0,
                "revocations_unconfirmed": 1.0}))
        session.commit()
    gone = page.locator('#hubs-table tr[data-holder="other-host:4242:deadbeef"]')
    expect(gone.locator(".pill").first).to_have_text("silent", timeout=LIVE)
    expect(gone.locator(".leases")).to_have_text("none")
    # Its audit is the latest: two enrolled devices cannot connect, shown in red.
    expect(audit.locator(".lacking.p-failed")).to_have_text(
        "2 enrolled devices without one", timeout=LIVE)
    expect(audit.locator(".deleted")).to_have_text("1")
    # A revocation it took that the broker has not confirmed, in red too.
    expect(page.locator("#revocation-line .unconfirmed.p-failed")).to_have_text(
        "1 revocation not confirmed by the broker yet")
    rows = page.locator("#hubs-table tbody tr")
    expect(rows.nth(0)).to_have_attribute("data-holder", console.hub.holder)  # running first


def _incident_of(console: Console, device_id: str) -> int | None:
    from sqlmodel import select

    from cloud_hub.db.ops_tables import Incident

    with Session(console.hub.engine) as session:
        return session.exec(select(Incident.id).where(Incident.device_id == device_id)).first()


SCRIPT = "<script>window.__xss=1</script>"
IMG = "<img src=x onerror=window.__xss=2>"


def test_device_supplied_text_is_shown_as_text_never_run(page: Any, console: Console) -> None:
    """Channel names, error texts and the agent version come from devices: a device that sends
    markup in them sees it printed, never executed (and the CSP would block it anyway)."""
    device_id = "evil-1"
    now = time.time()
    client = publisher_client(console.broker, client_id="test-evil")
    topics = console.hub.topics
    try:
        publish_wait(client, topics.status(device_id), encode(Status(
            device_id=device_id, state=DeviceStatus.ONLINE, at=now, agent_version=IMG)),
            retain=True)
        publish_wait(client, topics.telemetry(device_id), encode(TelemetryBatch(
            device_id=device_id, epoch=EPOCH, seq=1, channels=[SCRIPT, "flow"],
            ts=[now - 30 + i for i in range(30)], values=[[float(i % 5), 1.0]
                                                           for i in range(30)])))
        publish_wait(client, topics.reported(device_id), encode(Reported(
            device_id=device_id, model=ReportedModel(name="pump-ae", version=1),
            state=ModelState.FAILED, error=IMG + SCRIPT, since=now)), retain=True)
        publish_wait(client, topics.anomalies(device_id), encode(AnomalyEvent(
            device_id=device_id, epoch=EPOCH, seq=1, ts=(now - 10, now - 9), score=3.0,
            threshold=1.0,
            model=ModelRef(name="pump-ae", version=1), channels=[SCRIPT], detected_at=now)))
    finally:
        client.disconnect()
        client.loop_stop()
    wait_for(lambda: _incident_of(console, device_id), timeout=15, what="evil-1's incident")
    incident_id = _incident_of(console, device_id)

    log_in(page, console, path="/ui/fleet?q=evil")
    expect(page.locator("#fleet-table")).to_contain_text("evil-1")
    expect(page.locator("#fleet-table")).to_contain_text(IMG)  # the version, as text
    for path in ("/ui/fleet?q=evil", f"/ui/devices/{device_id}", "/ui/inbox",
                 f"/ui/incidents/{incident_id}", "/ui/inbox?view=events"):
        page.goto(console.url + path)
        page.wait_for_load_state("networkidle")
        assert page.evaluate("() => window.__xss") is None, path
        assert page.locator("script:not([src])").count() == 0, path
        assert page.locator("img[src=x]").count() == 0, path
    page.goto(console.url + f"/ui/incidents/{incident_id}")
    expect(page.locator(".chip", has_text=SCRIPT).first).to_be_visible()
    expect(page.locator("#incident-chart .ch-title").first).to_have_text(re.compile(
        re.escape(SCRIPT)), timeout=LIVE)
    page.goto(console.url + f"/ui/devices/{device_id}")
    expect(page.locator(".error-text").first).to_contain_text(IMG + SCRIPT)
    assert page.evaluate("() => window.__xss") is None
