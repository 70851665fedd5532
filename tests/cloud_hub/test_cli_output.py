"""The admin CLI as a person reads it: model views that fit a screen, options after the command,
times as durations or ISO, a rollout followed to its end, and a hub that is not there."""

from __future__ import annotations

import argparse
import datetime as dt
import json

import pytest

from cloud_hub.cli import build_parser, main
from cloud_hub.cli.serve import ServerHandle
from cloud_hub.cli.timearg import parse_when
from cloud_hub.service import Hub
from simulator.broker import Broker
from simulator.ports import free_port
from tests.cloud_hub.conftest import ADMIN_KEY, run_cli
from tests.cloud_hub.fleet import FakeDevice
from tests.cloud_hub.helpers import tiny_artifact, variant_artifact

pytestmark = [pytest.mark.integration, pytest.mark.hub]
SCREEN = 24


def test_models_show_and_publish_fit_a_screen(
    hub: Hub, server: ServerHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    name, version = hub.register(tiny_artifact(), name="pump-ae")
    code, out, _ = run_cli(server, capsys, "models", "show", f"{name}:{version}")
    lines = out.splitlines()
    assert code == 0 and 8 <= len(lines) <= SCREEN, out
    assert lines[0].startswith("pump-ae:1  draft")
    assert any(ln.startswith("parity     passed: decision agreement 1.0000") for ln in lines)
    assert any(ln.startswith("input      window 8 x 2 channels: a, b") for ln in lines)
    code, out, _ = run_cli(server, capsys, "models", "publish", f"{name}:{version}")
    size = out.split()[4]
    assert code == 0 and out.splitlines() == [
        f"published pump-ae:1  dense_ae float32 {size} KiB  agreement 1.0000  channels a,b"]
    code, out, _ = run_cli(server, capsys, "--json", "models", "show", f"{name}:{version}")
    assert json.loads(out)["manifest"]["name"] == "pump-ae"  # --json keeps everything


def test_models_show_lists_the_variants_a_version_keeps(
    hub: Hub, server: ServerHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    name, version = hub.register(variant_artifact(), name="pump-ae")
    code, out, _ = run_cli(server, capsys, "models", "show", f"{name}:{version}")
    lines = out.splitlines()
    assert code == 0 and len(lines) <= SCREEN, out
    assert lines[0].startswith("pump-ae:1  draft  dense_ae  int8")
    [variant] = [ln for ln in lines if ln.startswith("variant ")]
    assert variant.startswith("variant    float32  agreement 1"), variant


def test_json_and_api_key_work_after_the_subcommand(
    hub: Hub, server: ServerHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    hub.register(tiny_artifact(), name="pump-ae")
    code = main(["--url", server.base_url, "models", "list", "--json", "--api-key", ADMIN_KEY])
    out = capsys.readouterr().out
    assert code == 0 and json.loads(out)[0]["name"] == "pump-ae"
    code = main(["models", "list", "--url", server.base_url, "--api-key", ADMIN_KEY])
    assert code == 0 and "pump-ae" in capsys.readouterr().out
    code = main(["--api-key", "wrong-key-0123456789", "--url", server.base_url, "models", "list",
                 "--api-key", ADMIN_KEY, "--json"])
    assert code == 0, "the value after the command wins"


def test_since_takes_durations_and_iso_times() -> None:
    now = 1_800_000_000.0
    assert parse_when("10m", now=now) == now - 600
    assert parse_when("2h", now=now) == now - 7200
    assert parse_when("1h30m", now=now) == now - 5400
    assert parse_when("1700000000.5") == 1_700_000_000.5
    assert parse_when("2026-12-02T06:00:00") == dt.datetime(
        2026, 12, 2, 6, tzinfo=dt.UTC).timestamp()
    assert parse_when("2026-12-02T08:00:00+02:00") == parse_when("2026-12-02T06:00:00Z")


def test_a_bad_since_is_refused_by_name(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as done:
        main(["anomalies", "tail", "--since", "yesterday"])
    assert done.value.code == 2
    assert "'yesterday' is not a time" in capsys.readouterr().err


def test_anomalies_since_a_duration_against_the_hub(
    server: ServerHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_cli(server, capsys, "anomalies", "tail", "--since", "10m")
    assert code == 0 and "no anomaly events yet" in err


def test_an_unreachable_hub_is_named_without_http_0(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert main(["--url", url, "devices", "list"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot reach the hub at {url} (")
    assert "HTTP 0" not in err


def test_rollout_create_wait_follows_it_to_the_end(
    broker: Broker,
    hub: Hub, server: ServerHandle, capsys: pytest.CaptureFixture[str]
) -> None:
    devices = ["pump-0", "pump-1", "pump-2"]
    fleet = [FakeDevice(d, broker, hub.topics, hub.signing_key.key_id,
                        hub.signing_key.public_b64()) for d in devices]
    try:
        name, version = hub.register(tiny_artifact(), name="pump-ae")
        assert run_cli(server, capsys, "models", "publish", f"{name}:{version}")[0] == 0
        code, out, err = run_cli(
            server, capsys, "--json", "rollout", "create", "--model", f"{name}:{version}",
            "--devices", ",".join(devices), "--wait",
            "--policy", '{"canary_size": 1, "wave_size": 2, "min_observation_s": 0.2}')
    finally:
        for device in fleet:
            device.close()
    assert code == 0, err
    final = json.loads(out)
    assert final["status"] == "succeeded" and final["devices_updated"] == 3
    assert "3/3 devices" in err  # the progress bar's last state, on stderr


def test_the_access_log_puts_successful_reads_at_debug() -> None:
    import logging

    from cloud_hub.cli.serve import ReadsAtDebug

    def record(method: str, status: int) -> logging.LogRecord:
        return logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1,
                                 '%s - "%s %s HTTP/%s" %d',
                                 ("127.0.0.1:5", method, "/api/v1/x", "1.1", status), None)

    access = logging.getLogger("uvicorn.access")
    before = access.level
    try:
        access.setLevel(logging.INFO)
        quiet = ReadsAtDebug()
        assert not quiet.filter(record("GET", 200))
        assert quiet.filter(record("POST", 202)) and quiet.filter(record("GET", 404))
        access.setLevel(logging.DEBUG)  # cloud-hub serve --log-level DEBUG
        shown = record("GET", 200)
        assert quiet.filter(shown) and shown.levelname == "DEBUG"
    finally:
        access.setLevel(before)


def test_no_command_has_an_option_that_takes_the_place_of_a_common_one() -> None:
    """--url, --api-key and --json may come before or after the command; an option of a
    command with the same destination would replace the common one (webhooks had its own
    --url, and every webhooks command went to no hub)."""
    parser = build_parser()
    common = {a.dest for a in parser._actions if a.option_strings} - {"help"}
    (commands,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    clashes = [(name, a.option_strings) for name, command in commands.choices.items()
               for a in command._actions
               if a.dest in common and a.default is not argparse.SUPPRESS and name != "serve"]
    assert clashes == []
    hub = parser.parse_args(["--url", "http://hub:8080", "webhooks", "create", "--name", "n",
                             "--endpoint", "https://alerts.example.com/x"])
    assert (hub.url, hub.endpoint) == ("http://hub:8080", "https://alerts.example.com/x")
