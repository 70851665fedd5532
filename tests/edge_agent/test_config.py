"""Agent configuration: TOML validated strictly, every error names the key and the value."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent.config import ConfigError, config_from_dict, load_config
from shared.signing import generate_signing_key


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return path


def test_minimal_config_gets_documented_defaults(tmp_path: Path) -> None:
    config = load_config(_write(tmp_path, 'device_id = "pump-7"\nstate_dir = "state"\n'))
    assert config.username == "pump-7", "MQTT username defaults to the device id"
    assert config.state_dir == tmp_path / "state", "relative state_dir is relative to the file"
    assert config.mqtt.port == 1883 and config.mqtt.topic_prefix == "edgeloop/v1"
    assert config.outbox.max_inflight == 100


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('device_id = "a"\n[mqtt]\nport = "high"\n', "key 'mqtt.port'"),
        ('device_id = "a"\n[mqtt]\nprot = 1883\n', "unknown key 'mqtt.prot'"),
        ('device_id = "a"\ncolour = "red"\n', "unknown key 'colour'"),
        ("[mqtt]\nport = 1883\n", "key 'device_id' is required"),
        ('device_id = "a b"\n', "key 'device_id'"),
        ('device_id = "a"\n[outbox]\nmax_inflight = 0\n', "key 'outbox.max_inflight'"),
        ('device_id = "a"\n[log]\nlevel = "LOUD"\n', "key 'log.level'"),
        ('device_id = "a"\n[mqtt]\nreconnect_initial_s = 5\nreconnect_max_s = 1\n',
         "key 'mqtt.reconnect_max_s': 1.0 is below"),
        ('device_id = "a"\n[trust.keys]\nabcdef0123456789 = "bm90IGEga2V5"\n',
         "keys.abcdef0123456789"),
        # keys of the resend window, replaced by the hub's acknowledgement: named as such
        ('device_id = "a"\n[outbox]\nresend_window_s = 300.0\n',
         "key 'outbox.resend_window_s' is no longer used: a message now stays in the outbox "
         "until the hub acknowledges"),
        ('device_id = "a"\n[outbox]\nresend_margin_s = 10.0\n',
         "key 'outbox.resend_margin_s' is no longer used"),
    ],
)
def test_config_errors_name_the_key(tmp_path: Path, text: str, expected: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert expected in str(err.value)
    assert str(path) in str(err.value)


def test_pinned_key_must_match_its_key_id(tmp_path: Path) -> None:
    key, other = generate_signing_key(), generate_signing_key()
    good = f'device_id = "a"\n[trust.keys]\n{key.key_id} = "{key.public_b64()}"\n'
    assert load_config(_write(tmp_path, good)).trust.keys == {key.key_id: key.public_b64()}
    bad = f'device_id = "a"\n[trust.keys]\n{key.key_id} = "{other.public_b64()}"\n'
    with pytest.raises(ConfigError, match=f"public key's id is '{other.key_id}'"):
        load_config(_write(tmp_path, bad))


def test_not_toml_and_missing_file_are_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(_write(tmp_path, "device_id = \n"))
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


def test_in_process_dict_config_works_like_the_file() -> None:
    config = config_from_dict({"device_id": "sim-1", "log": {"json": True}})
    assert config.log.json_format is True


def test_example_config_in_deploy_is_valid() -> None:
    example = Path(__file__).resolve().parents[2] / "deploy" / "agent.example.toml"
    config = load_config(example)
    assert config.source.type == "csv"
