"""`edge-agent init` writes an agent.toml that `edge-agent check` and `run` accept, with the
hub's signing key pinned (a stand-in answers GET /api/v1/signing-key as the hub does)."""

from __future__ import annotations

import json
import re
import stat
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edge_agent.cli import main
from edge_agent.config import load_config
from shared.signing import SigningKey, generate_signing_key
from simulator.ports import free_port

ADMIN_KEY = "admin-key-for-tests-0123456789"
ENROLLED: list[dict[str, object]] = []


@pytest.fixture
def hub_key() -> SigningKey:
    return generate_signing_key()


@pytest.fixture
def hub_url(hub_key: SigningKey) -> Iterator[str]:
    body = json.dumps({"key_id": hub_key.key_id, "public_key": hub_key.public_b64()}).encode()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self, status: int, data: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            found = self.path == "/api/v1/signing-key"
            self._answer(200 if found else 404, body if found else b'{"detail": "Not Found"}')

        def do_POST(self) -> None:  # noqa: N802 (the stdlib's name)
            """The hub's enrollment route, as its API documents it (a bundle per device)."""
            match = re.fullmatch(r"/api/v1/devices/([^/]+)/enroll", self.path)
            request = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            if match is None or match.group(1) == "old-hub":
                self._answer(404, b'{"detail": "Not Found"}')
            elif self.headers.get("X-API-Key") != ADMIN_KEY:
                self._answer(401, b'{"detail": "a valid X-API-Key header is required"}')
            else:
                ENROLLED.append(request)
                source = request["source"]
                toml = (f'device_id = "{match.group(1)}"\nstate_dir = "{request["state_dir"]}"\n'
                        '[mqtt]\nhost = "127.0.0.1"\nport = 8883\ntls = true\n'
                        'tls_ca_file = "ca.crt"\nusername = "u"\npassword = "secret-pw"\n'
                        f'[trust.keys]\n{hub_key.key_id} = "{hub_key.public_b64()}"\n'
                        f'[source]\ntype = "{source["type"]}"\n[source.options]\n'
                        + "".join(f"{k} = {json.dumps(v)}\n"
                                  for k, v in source["options"].items()))
                self._answer(201, json.dumps({"device_id": match.group(1), "agent_toml": toml,
                                              "ca_pem": "-----BEGIN CERTIFICATE-----\n"}).encode())

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_init_writes_a_config_that_check_accepts(
    hub_url: str, hub_key: SigningKey, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "skab.csv"
    data.write_text("datetime;a;b;anomaly\n2020-01-01 00:00:00;1;2;0\n")
    out = tmp_path / "device" / "agent.toml"
    assert main(["init", "--hub", hub_url, "--device", "pump-001", "--csv", str(data),
                 "--output", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    config = load_config(out)
    assert config.device_id == "pump-001"
    assert config.trust.keys == {hub_key.key_id: hub_key.public_b64()}
    assert (config.mqtt.host, config.mqtt.port) == ("127.0.0.1", 1883)
    assert config.source.type == "csv" and config.source.options["path"] == str(data)
    assert config.state_dir == out.parent / "agent-state"
    assert main(["check", "--config", str(out)]) == 0
    checked = capsys.readouterr().out
    assert f"trust: 1 pinned key(s) ['{hub_key.key_id}']" in checked
    assert "csv with channels ['a', 'b']" in checked


def test_init_with_stdin_channels_and_a_broker_elsewhere(hub_url: str, tmp_path: Path) -> None:
    out = tmp_path / "agent.toml"
    assert main(["init", "--hub", hub_url, "--device", "fan-7", "--channels", "rpm,temp",
                 "--mqtt-host", "broker.plant", "--mqtt-port", "8883", "-o", str(out)]) == 0
    config = load_config(out)
    assert config.source.type == "stdin" and config.source.options == {
        "channels": ["rpm", "temp"]}
    assert (config.mqtt.host, config.mqtt.port) == ("broker.plant", 8883)


def test_init_refuses_what_would_not_work(
    hub_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "agent.toml"
    assert main(["init", "--hub", hub_url, "--device", "pump-1", "-o", str(out)]) == 2
    assert "choose the source" in capsys.readouterr().err
    assert main(["init", "--hub", hub_url, "--device", "bad id", "--channels", "a",
                 "-o", str(out)]) == 2
    assert "key 'device_id'" in capsys.readouterr().err
    assert not out.exists()
    out.write_text("# mine\n")
    assert main(["init", "--hub", hub_url, "--device", "pump-1", "--channels", "a",
                 "-o", str(out)]) == 2
    assert "exists; --force replaces it" in capsys.readouterr().err
    assert out.read_text() == "# mine\n"
    gone = f"http://127.0.0.1:{free_port()}"
    assert main(["init", "--hub", gone, "--device", "pump-1", "--channels", "a",
                 "-o", str(out), "--force"]) == 2
    assert f"cannot reach the hub at {gone}" in capsys.readouterr().err


def test_init_with_an_api_key_enrolls_the_device_and_writes_its_bundle(
    hub_url: str, hub_key: SigningKey, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "pump-9" / "agent.toml"
    assert main(["init", "--hub", hub_url, "--device", "pump-9", "--channels", "a,b",
                 "--api-key", ADMIN_KEY, "-o", str(out)]) == 0
    assert "enrolled" in capsys.readouterr().out
    assert ENROLLED[-1] == {"state_dir": "agent-state",
                            "source": {"type": "stdin", "options": {"channels": ["a", "b"]}}}
    config = load_config(out)
    assert (config.mqtt.tls, config.mqtt.username, config.mqtt.port) == (True, "u", 8883)
    assert config.trust.keys == {hub_key.key_id: hub_key.public_b64()}
    assert (out.parent / "ca.crt").read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert stat.S_IMODE(out.stat().st_mode) == 0o600, "the file holds the broker password"


def test_init_names_a_refused_key_and_a_hub_without_enrollment(
    hub_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "agent.toml"
    assert main(["init", "--hub", hub_url, "--device", "pump-9", "--channels", "a",
                 "--api-key", "wrong-key-0123456789", "-o", str(out)]) == 2
    assert (f"HTTP 401 from POST {hub_url}/api/v1/devices/pump-9/enroll: a valid X-API-Key "
            "header is required") in capsys.readouterr().err
    assert main(["init", "--hub", hub_url, "--device", "old-hub", "--channels", "a",
                 "--api-key", ADMIN_KEY, "-o", str(out)]) == 2
    assert "does not enroll devices" in capsys.readouterr().err
    assert not out.exists()
