"""`edge-agent check` and `edge-agent status`: local answers, no network needed."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from edge_agent.cli import main
from edge_agent.models.store import ModelStore
from edge_agent.telemetry.outbox import Outbox, Stream
from shared.codec import split
from shared.signing import SigningKey, generate_signing_key
from tests.edge_agent.support import fixture_bytes, make_manifest

DATA = fixture_bytes("ae_int8_w8c2.tflite")


def _config(tmp_path: Path, key: SigningKey | None) -> Path:
    csv = tmp_path / "data.csv"
    csv.write_text("a,b\n1,2\n3,4\n")
    trust = f'[trust.keys]\n{key.key_id} = "{key.public_b64()}"\n' if key else ""
    path = tmp_path / "agent.toml"
    path.write_text(f'device_id = "dev-c"\nstate_dir = "state"\n{trust}'
                    f'[source]\ntype = "csv"\noptions = {{ path = "{csv}" }}\n')
    return path


def _install(tmp_path: Path, key: SigningKey) -> Path:
    store = ModelStore(tmp_path / "state" / "models", {key.key_id: key.public_raw})
    manifest = make_manifest(key, DATA)
    store.accept_manifest(manifest.to_bytes(), name=manifest.name, version=manifest.version)
    for i, chunk in enumerate(split(DATA, manifest.chunk_size)):
        store.put_chunk(manifest, i, chunk)
    store.assemble(manifest)
    store.activate(manifest)
    return store.model_path(manifest.name, manifest.version)


def test_check_passes_with_keys_source_and_a_verified_model(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = generate_signing_key()
    _install(tmp_path, key)
    assert main(["check", "--config", str(_config(tmp_path, key))]) == 0
    out = capsys.readouterr().out
    assert "current pump-ae v1 verified and loads" in out
    assert "csv with channels ['a', 'b']" in out


def test_check_fails_on_a_tampered_model_file_and_missing_keys(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = generate_signing_key()
    path = _install(tmp_path, key)
    path.write_bytes(DATA[:-10])
    assert main(["check", "--config", str(_config(tmp_path, key)), "--json"]) == 1
    results = json.loads(capsys.readouterr().out)
    failed = [r["check"] for r in results if not r["ok"]]
    assert any("truncated or replaced" in text for text in failed)
    assert main(["check", "--config", str(_config(tmp_path, None))]) == 1
    assert "no pinned keys" in capsys.readouterr().out


def test_check_names_the_bad_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "agent.toml"
    path.write_text('device_id = "x"\n[outbox]\nmax_bytes = "lots"\n')
    assert main(["check", "--config", str(path)]) == 2
    assert "key 'outbox.max_bytes'" in capsys.readouterr().err


def test_status_reads_the_local_state_without_the_network(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = generate_signing_key()
    _install(tmp_path, key)
    outbox = Outbox(tmp_path / "state" / "outbox.db", max_bytes=4096)
    for _ in range(60):
        outbox.add(device_id="dev-c", stream=Stream.TELEMETRY, topic="t",
                   build=lambda seq: b"x" * 100, readings=5)
    outbox.close()
    assert main(["status", "--config", str(_config(tmp_path, key)), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["current_model"]["name"] == "pump-ae"
    assert status["outbox"]["depth"] == 40
    assert status["outbox"]["drops"] == 20 and status["outbox"]["dropped_readings"] == 100
    assert main(["status", "--config", str(_config(tmp_path, key))]) == 0
    assert "drops 20 (100 readings, 0 anomalies)" in capsys.readouterr().out


def test_status_while_the_agent_is_still_creating_its_outbox(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "outbox.db").write_bytes(b"")  # opened, no tables yet
    assert main(["status", "--config", str(_config(tmp_path, None))]) == 0
    assert capsys.readouterr().out.startswith("device        dev-c")


def test_status_shows_the_drift_state_the_agent_wrote(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "state").mkdir()
    record = {"device_id": "dev-c", "updated_at": time.time(), "connected": True,
              "drift": {"state": "drift", "since": 1_700_000_000.0, "channels": ["flow"],
                        "anomaly_rate": 0.041, "baseline_anomaly_rate": 0.002}}
    (tmp_path / "state" / "status.json").write_text(json.dumps(record))
    assert main(["status", "--config", str(_config(tmp_path, None))]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("drift"))
    assert "drift since" in line and "on flow" in line
    assert "anomaly rate 4.1 % (baseline 0.2 %)" in line
