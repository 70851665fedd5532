"""`edge-agent init` writes an agent.toml that `edge-agent check` and `run` accept, with the
hub's signing key pinned (a stand-in answers GET /api/v1/signing-key as the hub does)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from edge_agent.cli import main
from edge_agent.config import load_config
from shared.signing import SigningKey, generate_signing_key
from simulator.broker import free_port


@pytest.fixture
def hub_key() -> SigningKey:
    return generate_signing_key()


@pytest.fixture
def hub_url(hub_key: SigningKey) -> Iterator[str]:
    body = json.dumps({"key_id": hub_key.key_id, "public_key": hub_key.public_b64()}).encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            found = self.path == "/api/v1/signing-key"
            self.send_response(200 if found else 404)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(body if found else b'{"detail": "Not Found"}')

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
