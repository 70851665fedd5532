"""Model registry commands: ``models`` lists, shows, compares, publishes, retires, rolls back
and downloads registered models; it takes parsed arguments and a :class:`HubClient`."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from cloud_hub.cli.argtypes import model_ref
from cloud_hub.cli.client import HubClient
from cloud_hub.cli.model_view import model_line, model_lines
from cloud_hub.cli.render import console, emit
from cloud_hub.core.states import ModelStatus

__all__ = ["MODEL_COMMANDS", "add_model_parsers"]


def add_model_parsers(sub: Any) -> None:
    m = sub.add_parser("models", help="the model registry")
    m.add_argument("action", choices=["list", "show", "compare", "publish", "retire", "download",
                                      "rollback"])
    m.add_argument("refs", nargs="*", type=model_ref, metavar="NAME:VERSION")
    m.add_argument("--name")
    m.add_argument("--status", choices=[s.value for s in ModelStatus])
    m.add_argument("--output", "-o")
    m.add_argument("--devices", help="rollback: comma-separated device ids (default: every "
                                     "device on another version of that model)")


_MODEL_COLS = ("name", "version", "status", "family", "quantization", "channels", "size_bytes",
               "float_size_bytes", "decision_agreement", "parity_passed", "devices_running")


def models(a: argparse.Namespace, c: HubClient) -> int:
    if a.action == "list":
        emit(c.get_all("/models", name=a.name, status=a.status), a.json, _MODEL_COLS, "models")
    elif a.action == "show":
        name, version = a.refs[0]
        detail = c.get(f"/models/{name}/{version}")
        if a.json:
            emit(detail, True)
        else:
            _print_lines(model_lines(detail))
    elif a.action == "compare":
        if len(a.refs) != 2:
            raise SystemExit("models compare needs two NAME:VERSION arguments")
        (n1, v1), (n2, v2) = a.refs
        data = c.get("/models/compare", a=f"{n1}:{v1}", b=f"{n2}:{v2}")
        if a.json:
            emit(data, True)
        else:
            rows = [{"figure": k, "a": data["a"][k], "b": data["b"][k],
                     "differs": "*" if k in data["differs"] else ""}
                    for k in data["a"] if k not in ("spec", "validation", "parity", "modes")]
            rows += [{"figure": f"parity.{k}", "a": v, "b": data["b"]["parity"].get(k)}
                     for k, v in data["a"]["parity"].items()]
            emit(rows, False, ("figure", "a", "b", "differs"), "compare")
            for mode_ref in ("a", "b"):
                if data[mode_ref].get("modes"):
                    emit(data[mode_ref]["modes"], False, title=f"{mode_ref}: quantization modes")
    elif a.action in ("publish", "retire"):
        done = ModelStatus.PUBLISHED if a.action == "publish" else ModelStatus.RETIRED
        for name, version in a.refs:
            record = c.post(f"/models/{name}/{version}/{a.action}")
            if a.json:
                emit(record, True)
            else:
                _print_lines([model_line(record, done)])
    elif a.action == "rollback":
        name, version = a.refs[0]
        body: dict[str, Any] = {"devices": a.devices.split(",")} if a.devices else {}
        done = c.post(f"/models/{name}/{version}/rollback", body)
        if a.json:
            emit(done, True)
        else:
            console().print(f"rolled back to {name}:{version} (release {done['release']}): "
                            f"{len(done['devices'])} device(s) "
                            f"{', '.join(done['devices']) or '-'}",
                            highlight=False, markup=False, soft_wrap=True)
    elif a.action == "download":
        name, version = a.refs[0]
        out = Path(a.output or f"{name}-v{version}.tflite")
        data = c.get(f"/models/{name}/{version}/tflite")
        try:
            out.write_bytes(data)
        except OSError as exc:
            raise SystemExit(f"error: cannot write {out}: {exc.strerror or exc}") from None
        console().print(f"wrote {out}", highlight=False)
    return 0


def _print_lines(lines: list[str]) -> None:
    console().print("\n".join(lines), highlight=False, markup=False, soft_wrap=True)


MODEL_COMMANDS = {"models": models}
