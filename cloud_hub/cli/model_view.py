"""A registered model as a person reads it: a screenful for ``models show``, one line for
``models publish`` / ``retire`` (``--json`` keeps everything)."""

from __future__ import annotations

from typing import Any

from cloud_hub.cli.render import fmt

__all__ = ["model_lines", "model_line"]


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 1024:.1f} KiB" if n < 1024 * 1024 else f"{n / 1024 / 1024:.2f} MiB"


def _agreement(m: dict[str, Any]) -> str:
    value = m.get("decision_agreement")
    return "-" if value is None else f"{value:.4f}"


def model_line(m: dict[str, Any], done: str = "") -> str:
    """``published pump-ae:3  dense_ae int8 12.3 KiB  agreement 0.9990  channels a,b,c``
    (``done`` in front, else the model's status after its name)."""
    ref = f"{done} {m['name']}:{m['version']}" if done else \
        f"{m['name']}:{m['version']}  {m['status']}"
    return (f"{ref}  {m['family']} "
            f"{m['quantization']} {_size(m.get('size_bytes'))}  agreement {_agreement(m)}  "
            f"channels {','.join(m.get('channels') or []) or '-'}")


def model_lines(m: dict[str, Any]) -> list[str]:
    """The figures that decide whether to ship it, in about 15 lines."""
    spec, parity, training = m.get("spec") or {}, m.get("parity") or {}, m.get("training") or {}
    validation, inp = m.get("validation") or {}, m.get("input") or {}
    channels = m.get("channels") or []
    lines = [
        f"{m['name']}:{m['version']}  {m['status']}  {m['family']}  {m['quantization']}",
        f"input      window {inp.get('window', spec.get('window', '-'))} x {len(channels)} "
        f"channels: {', '.join(channels)}",
        f"size       {_size(m.get('size_bytes'))} (float32 {_size(m.get('float_size_bytes'))})",
        f"threshold  {fmt(m.get('threshold'))}  {m.get('threshold_method', '')}".rstrip(),
    ]
    gate = "passed" if m.get("parity_passed") else "FAILED"
    lines.append(
        f"parity     {gate}: decision agreement {_agreement(m)} (minimum "
        f"{fmt(parity.get('min_agreement'))}) on {fmt(parity.get('windows'))} held-out windows, "
        f"score correlation {fmt(parity.get('score_correlation'))}")
    if m.get("parity_failure"):
        lines.append(f"           {m['parity_failure']}")
    devices = training.get("devices") or []
    source = training.get("source") or (
        f"{len(devices)} device(s): {', '.join(devices[:5])}" + (" ..." if len(devices) > 5
                                                                else "") if devices else "-")
    fit_s = (m.get("extra") or {}).get("fit_seconds")
    lines.append(f"training   {source}; {fmt(training.get('rows'))} rows, "
                 f"{fmt(spec.get('epochs'))} epochs max, {fmt(fit_s)} s to fit")
    if training.get("since") is not None:
        lines.append(f"           data from {fmt(training.get('since'))} to "
                     f"{fmt(training.get('until'))}")
    if validation:
        shown = ", ".join(f"{k} {fmt(v)}" for k, v in validation.items())
        lines.append(f"validation {shown}")
    for mode in (m.get("extra") or {}).get("modes") or []:
        ok = "ok  " if mode.get("passed") else "fail"
        lines.append(f"mode       {mode['quantization']:<8} {ok} agreement "
                     f"{mode['decision_agreement']:.4f}  {_size(mode.get('size_bytes'))}  "
                     f"{fmt(mode.get('us_per_window'))} us/window")
    for variant in m.get("variants") or []:  # kept for devices on which it runs faster
        lines.append(f"variant    {variant['quantization']:<8} agreement "
                     f"{fmt(variant.get('decision_agreement'))}  "
                     f"{_size(variant.get('size_bytes'))}  sha256 {variant['sha256'][:12]}…, "
                     f"sent to devices whose runtime runs it faster")
    running = m.get("devices") or []
    lines.append(f"devices    {len(running)} running" + (
        f": {', '.join(running[:8])}" + (" ..." if len(running) > 8 else "") if running else ""))
    lines.append(f"created    {fmt(m.get('created_at'))}  published "
                 f"{fmt(m.get('published_at'))}  retired {fmt(m.get('retired_at'))}")
    lines.append(f"sha256     {m.get('sha256', '-')}  key {m.get('key_id', '-')}")
    return lines
