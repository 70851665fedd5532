"""The hub's settings: `serve --help` and the README list every one with its default, and a bad
value stops the hub with one line naming the variable (never a traceback, never a secret)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from cloud_hub.cli import main
from cloud_hub.core.config import Settings
from cloud_hub.core.settings_doc import README_END, README_START, markdown_table

README = Path(__file__).resolve().parents[2] / "README.md"


def _defaults() -> dict[str, str]:
    out = {}
    for name, info in Settings.model_fields.items():
        default = info.get_default(call_default_factory=True)
        out[f"EDGELOOP_{name.upper()}"] = (
            "unset" if default is None else '""' if default == "" else str(default))
    return out


def test_serve_help_lists_every_setting_with_its_default(
    capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as done:
        main(["serve", "--help"])
    assert done.value.code == 0
    lines = capsys.readouterr().out.splitlines()
    for env, default in _defaults().items():
        line = next((ln for ln in lines if ln.split()[:1] == [env]), None)
        assert line is not None, f"{env} missing from serve --help"
        assert line.split()[1] == default, line
        assert len(line.split()) > 2, f"{env} has no description: {line}"


def test_the_readme_table_is_the_generated_one() -> None:
    text = README.read_text(encoding="utf-8")
    start, end = text.index(README_START) + len(README_START), text.index(README_END)
    assert text[start:end].strip() == markdown_table(), (
        "README's settings table is stale: run  .venv/bin/python -m cloud_hub.core.settings_doc "
        "README.md")
    listed = set(re.findall(r"^\| `(EDGELOOP_[A-Z0-9_]+)` \|", text[start:end], re.MULTILINE))
    assert listed == set(_defaults())


def test_a_short_admin_key_is_one_line_naming_the_setting_without_its_value(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("EDGELOOP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("EDGELOOP_ADMIN_API_KEY", "change-me")
    assert main(["serve"]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [
        "error: EDGELOOP_ADMIN_API_KEY: String should have at least 16 characters "
        "(got 9 characters)"]


def test_each_bad_setting_gets_its_own_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("EDGELOOP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("EDGELOOP_MQTT_PORT", "eighty")
    monkeypatch.setenv("EDGELOOP_TOPIC_PREFIX", "bad/#/prefix")
    assert main(["serve"]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2 and "Traceback" not in "".join(lines)
    assert lines[0].startswith("error: EDGELOOP_MQTT_PORT: ") and lines[0].endswith(
        "(got 'eighty')")
    assert lines[1].startswith("error: EDGELOOP_TOPIC_PREFIX: ") and "bad/#/prefix" in lines[1]


def test_a_receive_window_smaller_than_a_batch_is_refused_naming_both(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setenv("EDGELOOP_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("EDGELOOP_INGEST_BATCH_MAX", "9000")
    assert main(["serve"]) == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "EDGELOOP_MQTT_RECEIVE_MAXIMUM (8000) is below EDGELOOP_INGEST_BATCH_MAX (9000)" in line
    monkeypatch.setenv("EDGELOOP_MQTT_RECEIVE_MAXIMUM", "10000")
    settings = Settings()
    assert (settings.ingest_batch_max, settings.mqtt_receive_maximum) == (9000, 10000)
