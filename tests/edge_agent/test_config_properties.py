"""Properties of the agent's config loader, checked by Hypothesis on generated TOML files.

- every config made of valid values loads, and what loads validates again to itself;
- any change to a valid config (a wrong value, an unknown key, a missing key, a section that
  is not a table) either still loads or raises ConfigError naming that key: never another
  exception, never a message about some other key.
"""

from __future__ import annotations

import ast
import copy
import re
import tempfile
from pathlib import Path
from typing import Any

import msgspec
import tomli_w
from hypothesis import event, given
from hypothesis import strategies as st

from edge_agent.config import AgentConfig, ConfigError, config_from_dict, load_config
from shared.signing import generate_signing_key

_KEYS = [generate_signing_key() for _ in range(2)]
_MAX_TOML_INT = 2**63 - 1

ids = st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True)
texts = st.text(max_size=20)
prefixes = st.from_regex(r"[a-z0-9]{1,8}(/[a-z0-9]{1,8}){0,2}", fullmatch=True)


def _seconds(low: float, high: float, *, open_low: bool = True) -> st.SearchStrategy[float]:
    return st.floats(min_value=low, max_value=high, exclude_min=open_low)


@st.composite
def _mqtt(draw: st.DrawFn) -> dict[str, Any]:
    initial = draw(_seconds(0, 3600))
    section = draw(st.fixed_dictionaries({}, optional={
        "host": texts, "port": st.integers(1, 65535), "keepalive": st.integers(5, 3600),
        "topic_prefix": prefixes, "username": texts, "password": texts, "tls": st.booleans(),
        "tls_ca_file": texts, "session_expiry_s": st.integers(0, _MAX_TOML_INT),
    }))
    if draw(st.booleans()):
        section["reconnect_initial_s"] = initial
        section["reconnect_max_s"] = draw(_seconds(initial, 86400, open_low=False))
    return section


_TOML_SCALARS = st.one_of(st.booleans(), st.integers(-_MAX_TOML_INT, _MAX_TOML_INT),
                          st.floats(allow_nan=False, allow_infinity=False), texts)

configs = st.fixed_dictionaries({"device_id": ids}, optional={
    "state_dir": st.from_regex(r"[a-z][a-z0-9_/-]{0,20}", fullmatch=True),
    "mqtt": _mqtt(),
    "trust": st.fixed_dictionaries({}, optional={"keys": st.sampled_from([
        {}, {_KEYS[0].key_id: _KEYS[0].public_b64()},
        {k.key_id: k.public_b64() for k in _KEYS}])}),
    "source": st.fixed_dictionaries({}, optional={
        "type": st.sampled_from(["stdin", "csv", "mqtt", "simulated"]),
        "options": st.dictionaries(st.from_regex(r"[a-z_]{1,10}", fullmatch=True),
                                   _TOML_SCALARS, max_size=3)}),
    "telemetry": st.fixed_dictionaries({}, optional={
        "batch_max_readings": st.integers(1, 10_000), "batch_max_age_s": _seconds(0, 3600)}),
    "outbox": st.fixed_dictionaries({}, optional={
        "max_bytes": st.integers(4096, _MAX_TOML_INT), "max_age_s": _seconds(0, 1e12),
        "anomaly_max_age_s": _seconds(0, 1e12), "max_inflight": st.integers(1, 10_000),
        "ack_timeout_s": _seconds(0, 3600), "probe_max_s": _seconds(0, 86400),
        "hub_silence_warn_s": _seconds(0, 86400),
        "synchronous": st.sampled_from(["full", "normal"])}),
    "model": st.fixed_dictionaries({}, optional={
        "shadow_windows": st.integers(0, 10**6), "max_shadow_anomaly_rate": _seconds(0, 1,
                                                                                     open_low=False),
        "download_timeout_s": _seconds(0, 1e6), "chunk_retries": st.integers(0, 100),
        "realert_windows": st.integers(0, 10**6), "calibration_windows": st.integers(0, 10**6),
        "calibration_quantile": st.floats(0, 1, exclude_min=True, exclude_max=True),
        "calibration_factor": _seconds(0, 1e6), "num_threads": st.integers(1, 64)}),
    "heartbeat": st.fixed_dictionaries({}, optional={"interval_s": _seconds(0, 1e6)}),
    "log": st.fixed_dictionaries({}, optional={
        "level": st.sampled_from(["debug", "INFO", "Warning", "ERROR"]), "json": st.booleans()}),
    "daemon": st.fixed_dictionaries({}, optional={"grace_s": _seconds(0, 600, open_low=False)}),
})


def _load(raw: dict[str, Any]) -> AgentConfig:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "agent.toml"
        path.write_text(tomli_w.dumps(raw), encoding="utf-8")
        return load_config(path)


def _revalidates(config: AgentConfig) -> None:
    again = config_from_dict(msgspec.to_builtins(config, enc_hook=str))
    assert again == config


@given(configs)
def test_every_config_of_valid_values_loads_and_validates_again(raw: dict[str, Any]) -> None:
    config = _load(raw)
    assert config.device_id == raw["device_id"]
    for section, values in raw.items():
        if isinstance(values, dict):
            for key, value in values.items():
                got = getattr(getattr(config, section), "json_format" if key == "json" else key)
                if (section, key) == ("mqtt", "tls_ca_file") and value and \
                        not Path(value).is_absolute():
                    assert Path(got).is_absolute(), got  # relative: beside agent.toml
                    continue
                assert got == (value.upper() if key == "level" else value), (section, key)
    _revalidates(config)


def _paths(value: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    if isinstance(value, dict):
        found = [prefix] if prefix else []
        return found + [p for k, v in value.items() for p in _paths(v, (*prefix, k))]
    return [prefix]


_NAMED = re.compile(r"""(?:unknown )?key (?P<key>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")""")
# Checks across fields name the field they judge, not the one that moved.
_CROSS_FIELD = {("mqtt", "reconnect_initial_s"): ("mqtt", "reconnect_max_s")}


@given(raw=configs, data=st.data())
def test_any_change_to_a_valid_config_loads_or_names_the_key(
    raw: dict[str, Any], data: st.DataObject
) -> None:
    changed = copy.deepcopy(raw)
    kind = data.draw(st.sampled_from(["value", "unknown", "missing", "table"]))
    if kind == "unknown":
        tables = [p for p in _paths(changed) if isinstance(_get(changed, p), dict)]
        where = data.draw(st.sampled_from([(), *tables]))
        name = data.draw(st.from_regex(r"[a-z_]{1,12}", fullmatch=True))
        if name in _get(changed, where) or where[:1] == ("source",) and where[-1:] == (
                "options",):
            return  # not unknown, or a table whose keys are free (source options)
        _get(changed, where)[name] = data.draw(_TOML_SCALARS)
        path = (*where, name)
    elif kind == "missing":
        del changed["device_id"]
        path = ("device_id",)
    else:
        # a top-level key first, so that every section is changed as often as the others
        top = data.draw(st.sampled_from(sorted(changed)))
        path = data.draw(st.sampled_from([p for p in _paths(changed) if p[0] == top]))
        value: Any = data.draw(_near(_get(changed, path))) if kind == "value" else {"x": 1}
        _get(changed, path[:-1])[path[-1]] = value
    try:
        _load(changed)
    except ConfigError as exc:
        event(f"refused: {kind}")
        named = _NAMED.search(str(exc))
        assert named, str(exc)
        said = tuple(ast.literal_eval(named.group("key")).split("."))
        allowed = {path, _CROSS_FIELD.get(path, path), (*path, "x")}  # x: the table's key
        assert said in allowed, (path, str(exc))
        return
    if path[:2] == ("source", "options") or path[:1] == ("source",) and kind == "table":
        return  # free-form options: anything loads
    event(f"loaded: {kind}")
    assert kind in ("value", "table"), f"{kind} change at {path} loaded"


def _near(value: Any) -> st.SearchStrategy[Any]:
    """Any scalar, or (as often) another value of the same type: a wrong one in range of it."""
    same: st.SearchStrategy[Any] = {
        bool: st.booleans(), int: st.integers(-_MAX_TOML_INT, _MAX_TOML_INT),
        float: st.floats(allow_nan=False, allow_infinity=False), str: st.text(max_size=40),
    }.get(type(value), _TOML_SCALARS)
    return st.one_of(same, _TOML_SCALARS)


@given(key_id=st.from_regex(r"[0-9a-f]{16}", fullmatch=True) | texts,
       text=st.text(max_size=60) | st.binary(min_size=0, max_size=40).map(
           lambda b: __import__("base64").b64encode(b).decode()))
def test_any_pinned_key_text_loads_or_names_its_entry(key_id: str, text: str) -> None:
    try:
        _load({"device_id": "a", "trust": {"keys": {key_id: text}}})
    except ConfigError as exc:
        named = _NAMED.search(str(exc))
        assert named and ast.literal_eval(named.group("key")) == f"trust.keys.{key_id}", exc


def _get(data: Any, path: tuple[str, ...]) -> Any:
    for part in path:
        data = data[part]
    return data
