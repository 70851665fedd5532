"""``edge-agent init``: write a working ``agent.toml`` for one device from what the hub tells.

The hub's public signing key is fetched from ``GET /api/v1/signing-key`` and pinned in
``[trust.keys]``; the broker defaults to the hub's host on port 1883; the source is a CSV file
(``--csv``) or JSON lines on stdin (``--channels``). The file is validated by the same loader
``edge-agent run`` uses before it is written. Standard library only (urllib, not httpx): this
runs on the device.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from edge_agent.config import ConfigError, config_from_dict, load_config

__all__ = ["InitError", "InitOptions", "fetch_signing_key", "render_config", "write_config"]

_TIMEOUT_S = 10.0


class InitError(RuntimeError):
    """The config cannot be written; the text says what to do."""


@dataclass(frozen=True)
class InitOptions:
    hub_url: str
    device_id: str
    output: Path
    mqtt_host: str | None = None  # default: the hub URL's host
    mqtt_port: int = 1883
    topic_prefix: str = "edgeloop/v1"
    state_dir: str | None = None  # default: <output name>-state beside the file
    csv: str | None = None
    channels: list[str] | None = None
    force: bool = False


def fetch_signing_key(hub_url: str) -> tuple[str, str]:
    """(key id, base64 public key) from the hub's public signing-key route."""
    url = hub_url.rstrip("/") + "/api/v1/signing-key"
    try:
        with urllib.request.urlopen(url, timeout=_TIMEOUT_S) as response:
            body = json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        raise InitError(f"the hub at {hub_url} answered HTTP {exc.code} for {url}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InitError(f"cannot reach the hub at {hub_url} ({reason})") from None
    except ValueError:
        raise InitError(f"{url} did not answer JSON: is {hub_url} an edgeloop hub?") from None
    if not isinstance(body, dict) or not all(
        isinstance(body.get(k), str) and body.get(k) for k in ("key_id", "public_key")
    ):
        raise InitError(f"{url} answered {str(body)[:100]!r}, not a signing key")
    return str(body["key_id"]), str(body["public_key"])


def _toml(value: object) -> str:
    # JSON strings, numbers, booleans and lists of strings are valid TOML values too.
    return json.dumps(value)


def render_config(options: InitOptions, key_id: str, public_key: str) -> str:
    """The agent.toml text (checked by the agent's own config loader before it is returned)."""
    if (options.csv is None) == (options.channels is None):
        raise InitError("choose the source: --csv FILE (replay a CSV) or --channels a,b "
                        "(JSON lines on stdin)")
    host = options.mqtt_host or urllib.parse.urlsplit(options.hub_url).hostname or "127.0.0.1"
    state_dir = options.state_dir or f"{options.output.stem}-state"
    lines = [
        "# Written by edge-agent init; every other key keeps its default",
        "# (deploy/agent.example.toml lists them all). Check it: edge-agent check --config FILE",
        f"device_id = {_toml(options.device_id)}",
        f"state_dir = {_toml(state_dir)}   # relative: beside this file",
        "",
        "[mqtt]",
        f"host = {_toml(host)}",
        f"port = {options.mqtt_port}",
        f"topic_prefix = {_toml(options.topic_prefix)}",
        "",
        "[trust.keys]",
        f"# the hub's model signing key, fetched from {options.hub_url}",
        f"{key_id} = {_toml(public_key)}",
        "",
        "[source]",
    ]
    if options.csv is not None:
        lines += ['type = "csv"', "", "[source.options]",
                  f"path = {_toml(options.csv)}   # relative: to the working directory",
                  "replay_speed = 1.0", "loop = true"]
    else:
        lines += ['type = "stdin"', "", "[source.options]",
                  f"channels = {_toml(options.channels)}"]
    text = "\n".join(lines) + "\n"
    import tomllib

    try:
        config_from_dict(tomllib.loads(text), str(options.output))
    except (ConfigError, tomllib.TOMLDecodeError) as exc:
        raise InitError(str(exc)) from None
    return text


def write_config(options: InitOptions) -> Path:
    """Fetch the key, render, validate and write atomically; the path written."""
    if options.output.exists() and not options.force:
        raise InitError(f"{options.output} exists; --force replaces it")
    key_id, public_key = fetch_signing_key(options.hub_url)
    text = render_config(options, key_id, public_key)
    options.output.parent.mkdir(parents=True, exist_ok=True)
    tmp = options.output.with_name(f".{options.output.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, options.output)
    load_config(options.output)  # exactly what `edge-agent run` will read
    return options.output
