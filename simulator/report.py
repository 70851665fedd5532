"""Build the run report from what happened, and write it as ``report.json`` and ``summary.md``.

Every figure is computed from measurements handed in (readings each source produced, what the
hub's REST API says it stored, the anomaly events it committed, the model's registry record);
nothing here is a constant.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simulator.scoring import DetectionScore, Event, GroundTruth

__all__ = [
    "BARS",
    "DeviceAccount",
    "Timeline",
    "account_devices",
    "build_report",
    "check_bars",
    "summary_markdown",
    "write_report",
]


@dataclass(frozen=True)
class DeviceAccount:
    """Per-device proof that nothing was lost: generated vs stored, raised vs stored, drops."""

    device_id: str
    readings_generated: int
    readings_stored: int
    anomalies_raised: int | None
    anomalies_stored: int
    drops: int | None
    bad_readings: int | None
    outbox_depth: int | None

    @property
    def readings_lost(self) -> int:
        return self.readings_generated - self.readings_stored

    def to_dict(self) -> dict[str, Any]:
        return {
            "device_id": self.device_id,
            "readings_generated": self.readings_generated,
            "readings_stored": self.readings_stored,
            "readings_lost": self.readings_lost,
            "anomalies_raised": self.anomalies_raised,
            "anomalies_stored": self.anomalies_stored,
            "drops": self.drops,
            "bad_readings": self.bad_readings,
            "outbox_depth": self.outbox_depth,
        }


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, dict):  # e.g. drops broken down by reason
        numbers = [v for v in value.values() if isinstance(v, int) and not isinstance(v, bool)]
        return sum(numbers)
    return None


def account_devices(
    generated: Mapping[str, int],
    stored_summary: Sequence[Mapping[str, Any]],
    events: Sequence[Event],
    agent_status: Mapping[str, Mapping[str, Any]],
) -> list[DeviceAccount]:
    """One account per device that generated readings (stored counts from telemetry/summary)."""
    stored = {str(row["device_id"]): int(row["readings"]) for row in stored_summary}
    events_by_device: dict[str, int] = {}
    for e in events:
        events_by_device[e.device_id] = events_by_device.get(e.device_id, 0) + 1
    accounts = []
    for device_id in sorted(generated):
        status = agent_status.get(device_id, {})
        accounts.append(
            DeviceAccount(
                device_id=device_id,
                readings_generated=int(generated[device_id]),
                readings_stored=stored.get(device_id, 0),
                anomalies_raised=_int_or_none(status.get("anomalies_raised")),
                anomalies_stored=events_by_device.get(device_id, 0),
                drops=_int_or_none(status.get("drops")),
                bad_readings=_int_or_none(status.get("bad_readings")),
                outbox_depth=_int_or_none(status.get("outbox_depth")),
            )
        )
    return accounts


def build_report(
    *,
    devices: int,
    duration_s: float,
    accounts: Sequence[DeviceAccount],
    score: DetectionScore,
    model: Mapping[str, Any],
    rollout: Mapping[str, Any],
    faults: Sequence[GroundTruth],
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The report: the fields the brief lists first, then the detail behind them."""
    generated = sum(a.readings_generated for a in accounts)
    stored = sum(a.readings_stored for a in accounts)
    scored = score.to_dict()
    report: dict[str, Any] = {
        "devices": devices,
        "duration_s": round(duration_s, 3),
        "samples_generated": generated,
        "telemetry_readings_stored": stored,
        "telemetry_lost": generated - stored,
        "faults_injected": score.faults_injected,
        "faults_detected": score.faults_detected,
        "false_alarms": score.false_alarms,
        "precision": _round(score.precision),
        "recall": _round(score.recall),
        "f1": _round(score.f1),
        "detection_latency_ms": {k: _round(v, 1) for k, v in
                                 scored["detection_latency_ms"].items()},
        "model": dict(model),
        "rollout": dict(rollout),
        "anomaly_events": score.events,
        "anomalies_raised": _sum_known(a.anomalies_raised for a in accounts),
        "anomalies_stored": sum(a.anomalies_stored for a in accounts),
        "agent_drops": _sum_known(a.drops for a in accounts),
        "by_kind": scored["by_kind"],
        "per_device": [a.to_dict() for a in accounts],
        "faults": [
            {**f.to_dict(), "detected": o.detected, "events": o.events,
             "latency_ms": _round(o.latency_ms, 1)}
            for f, o in zip(faults, score.outcomes, strict=True)
        ],
        "false_alarm_events": [
            {"device_id": e.device_id, "seq": e.seq, "ts_start": e.ts_start, "ts_end": e.ts_end,
             "score": e.score, "threshold": e.threshold}
            for e in score.false_alarm_events
        ],
    }
    report.update(extra or {})
    report["bars"] = check_bars(report)
    return report


# What a default demo must reach (issue 3); reported, never asserted in tests.
BARS: dict[str, str] = {
    "telemetry_lost": "== 0",
    "recall": ">= 0.9",
    "precision": ">= 0.9",
    "model.quantization": "== int8",
    "model.size_bytes": "<= 0.35 x model.float_size_bytes",
    "model.parity": ">= 0.99",
    "rollout.devices_updated": "== devices",
}


def check_bars(report: Mapping[str, Any]) -> dict[str, bool]:
    model = report.get("model", {})
    rollout = report.get("rollout", {})
    size, float_size = model.get("size_bytes"), model.get("float_size_bytes")
    return {
        "telemetry_lost": report.get("telemetry_lost") == 0,
        "recall": (report.get("recall") or 0) >= 0.9,
        "precision": (report.get("precision") or 0) >= 0.9,
        "model.quantization": model.get("quantization") == "int8",
        "model.size_bytes": bool(size and float_size and size <= 0.35 * float_size),
        "model.parity": (model.get("parity") or 0) >= 0.99,
        "rollout.devices_updated": rollout.get("devices_updated") == report.get("devices"),
    }


def write_report(report: Mapping[str, Any], out_dir: Path, plots: Sequence[Path] = ()) -> Path:
    """Write ``report.json`` and ``summary.md`` into ``out_dir``; returns the JSON's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "report.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)
    (out_dir / "summary.md").write_text(summary_markdown(report, plots, out_dir))
    return path


def summary_markdown(report: Mapping[str, Any], plots: Sequence[Path] = (),
                     out_dir: Path | None = None) -> str:
    m = report.get("model", {})
    r = report.get("rollout", {})
    lat = report.get("detection_latency_ms", {})
    bars = report.get("bars", {})
    title = report.get("title", "edgeloop run")
    lines = [
        f"# {title}",
        "",
        f"{report['devices']} devices, {report['duration_s']:.0f} s of fault injection.",
        "",
        "| measure | value | bar |",
        "|---|---|---|",
        _row("readings generated", report["samples_generated"]),
        _row("readings stored (deduplicated)", report["telemetry_readings_stored"]),
        _row("readings lost", report["telemetry_lost"], bars.get("telemetry_lost")),
        _row("faults injected", report["faults_injected"]),
        _row("faults detected", report["faults_detected"]),
        _row("anomaly events stored", report.get("anomaly_events")),
        _row("false alarms", report["false_alarms"]),
        _row("precision", report["precision"], bars.get("precision")),
        _row("recall", report["recall"], bars.get("recall")),
        _row("F1", report["f1"]),
        _row("detection latency p50 / p95 / max (ms)",
             f"{_fmt(lat.get('p50'))} / {_fmt(lat.get('p95'))} / {_fmt(lat.get('max'))}"),
        _row("model", f"{m.get('name')} v{m.get('version')}"),
        _row("quantization", m.get("quantization"), bars.get("model.quantization")),
        _row("size / float size (bytes)", f"{m.get('size_bytes')} / {m.get('float_size_bytes')}",
             bars.get("model.size_bytes")),
        _row("parity (decision agreement)", m.get("parity"), bars.get("model.parity")),
        _row("devices updated", r.get("devices_updated"), bars.get("rollout.devices_updated")),
        _row("seconds to full rollout", _fmt(r.get("seconds_to_full"), 2)),
        "",
    ]
    by_kind = report.get("by_kind") or {}
    if by_kind:
        lines += ["| fault kind | injected | detected | latency p50 (ms) |", "|---|---|---|---|"]
        for kind, k in by_kind.items():
            lines.append(f"| {kind} | {k['injected']} | {k['detected']} | "
                         f"{_fmt(k.get('latency_ms_p50'))} |")
        lines.append("")
    per_device = report.get("per_device") or []
    if per_device:
        lines += ["| device | generated | stored | lost | anomalies raised | stored | drops |",
                  "|---|---|---|---|---|---|---|"]
        for d in per_device:
            lines.append(
                f"| {d['device_id']} | {d['readings_generated']} | {d['readings_stored']} | "
                f"{d['readings_lost']} | {_fmt(d['anomalies_raised'])} | "
                f"{d['anomalies_stored']} | {_fmt(d['drops'])} |"
            )
        lines.append("")
    for p in plots:
        shown = p.relative_to(out_dir) if out_dir and p.is_relative_to(out_dir) else p
        lines.append(f"![{p.stem}]({shown})")
    return "\n".join(lines) + "\n"


def _row(name: str, value: Any, bar: bool | None = None) -> str:
    mark = "" if bar is None else ("met" if bar else "**not met**")
    return f"| {name} | {_fmt(value)} | {mark} |"


def _fmt(value: Any, digits: int = 0) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        if digits:
            return f"{value:.{digits}f}"
        return f"{value:.4g}" if abs(value) < 10 else f"{value:,.0f}"
    return str(value)


def _round(value: float | None, digits: int = 4) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return round(float(value), digits)


def _sum_known(values: Any) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


@dataclass
class Timeline:
    """Wall-clock seconds each phase took, for the report."""

    phases: dict[str, float] = field(default_factory=dict)

    def add(self, name: str, seconds: float) -> None:
        self.phases[name] = round(seconds, 2)
