"""``edge-agent init``: write a working ``agent.toml`` for one device from what the hub tells.

With an API key (``--api-key`` or ``EDGELOOP_API_KEY``, admin scope) the device is enrolled:
``POST /api/v1/devices/{id}/enroll`` returns its bundle (broker credential, TLS CA, pinned
signing keys), written as ``agent.toml`` (0600) and ``ca.crt`` beside it. Without one, only the
hub's public signing key is fetched (``GET /api/v1/signing-key``) and pinned, for a broker
without per-device credentials; the broker then defaults to the hub's host on port 1883.
Either way the source is a CSV file (``--csv``) or JSON lines on stdin (``--channels``), and
the file is validated by the loader ``edge-agent run`` uses. Standard library only (urllib, not
httpx): this runs on the device.
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

__all__ = ["InitError", "InitOptions", "enroll", "fetch_signing_key", "render_config",
           "write_config"]

_TIMEOUT_S = 10.0
CA_FILE_NAME = "ca.crt"  # the bundle's agent.toml names it beside itself


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
    api_key: str | None = None  # given: enroll the device (broker credential, CA) first

    def source(self) -> tuple[str, dict[str, object]]:
        """The agent's [source]: (type, options)."""
        if (self.csv is None) == (self.channels is None):
            raise InitError("choose the source: --csv FILE (replay a CSV) or --channels a,b "
                            "(JSON lines on stdin)")
        if self.csv is not None:
            return "csv", {"path": self.csv, "replay_speed": 1.0, "loop": True}
        return "stdin", {"channels": self.channels}

    def resolved_state_dir(self) -> str:
        return self.state_dir or f"{self.output.stem}-state"


def _call(hub_url: str, path: str, *, body: object = None,
          api_key: str | None = None) -> object:
    url = hub_url.rstrip("/") + "/api/v1" + path
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["X-API-Key"] = api_key
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers=headers,
                                     method="GET" if body is None else "POST")
    try:
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            return json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        try:
            detail = json.loads(exc.read().decode("utf-8")).get("detail")
        except (ValueError, AttributeError):
            detail = None
        if exc.code == 404 and path.endswith("/enroll") and detail == "Not Found":
            raise InitError(f"the hub at {hub_url} does not enroll devices (no {path}); "
                            "leave out the API key to pin its signing key only") from None
        raise InitError(f"HTTP {exc.code} from {request.get_method()} {url}"
                        + (f": {detail}" if detail else "")) from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise InitError(f"cannot reach the hub at {hub_url} ({reason})") from None
    except ValueError:
        raise InitError(f"{url} did not answer JSON: is {hub_url} an edgeloop hub?") from None


def fetch_signing_key(hub_url: str) -> tuple[str, str]:
    """(key id, base64 public key) from the hub's public signing-key route."""
    url = hub_url.rstrip("/") + "/api/v1/signing-key"
    body = _call(hub_url, "/signing-key")
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
    source = options.source()
    host = options.mqtt_host or urllib.parse.urlsplit(options.hub_url).hostname or "127.0.0.1"
    state_dir = options.resolved_state_dir()
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
    source_type, source_options = source
    lines += [f"type = {_toml(source_type)}", "", "[source.options]"]
    lines += [f"{key} = {_toml(value)}" for key, value in source_options.items()]
    text = "\n".join(lines) + "\n"
    _validate(text, options.output)
    return text


def _validate(text: str, where: Path) -> None:
    import tomllib

    try:
        config_from_dict(tomllib.loads(text), str(where))
    except (ConfigError, tomllib.TOMLDecodeError) as exc:
        raise InitError(str(exc)) from None


def enroll(options: InitOptions) -> tuple[str, str | None]:
    """(agent.toml text, CA PEM or None) of the device's enrollment bundle."""
    source_type, source_options = options.source()
    body: dict[str, object] = {"state_dir": options.resolved_state_dir(),
                               "source": {"type": source_type, "options": source_options}}
    if options.mqtt_host is not None:
        body["mqtt_host"] = options.mqtt_host
    if options.mqtt_port != 1883:
        body["mqtt_port"] = options.mqtt_port
    bundle = _call(options.hub_url, f"/devices/{options.device_id}/enroll", body=body,
                   api_key=options.api_key)
    if not isinstance(bundle, dict) or not isinstance(bundle.get("agent_toml"), str):
        raise InitError(f"the hub's enrollment answered {str(bundle)[:100]!r}, not a bundle")
    ca_pem = bundle.get("ca_pem")
    _validate(bundle["agent_toml"], options.output)
    return bundle["agent_toml"], ca_pem if isinstance(ca_pem, str) else None


def _write(path: Path, text: str, mode: int) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.replace(tmp, path)


def write_config(options: InitOptions) -> Path:
    """Enroll (with an API key) or fetch the key, validate, and write atomically; the path."""
    if options.output.exists() and not options.force:
        raise InitError(f"{options.output} exists; --force replaces it")
    options.source()  # refuse a missing source before asking the hub anything
    ca_pem = None
    if options.api_key:
        text, ca_pem = enroll(options)
    else:
        key_id, public_key = fetch_signing_key(options.hub_url)
        text = render_config(options, key_id, public_key)
    options.output.parent.mkdir(parents=True, exist_ok=True)
    if ca_pem is not None:
        _write(options.output.parent / CA_FILE_NAME, ca_pem, 0o644)
    _write(options.output, text, 0o600)  # an enrolled config holds the broker password
    load_config(options.output)  # exactly what `edge-agent run` will read
    return options.output
